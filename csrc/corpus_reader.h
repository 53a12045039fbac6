// Streaming JSON-lines reader: reads plain or gzip files, inflated with zlib (or blocks fed from Python,
// e.g. zstd-decompressed), splits lines, validates UTF-8 and JSON, and returns the text and id of
// each record in Arrow string layout, a batch at a time, so a corpus is never held whole in memory.
#pragma once
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace nextlong {

// Bad input that the caller should report with its file and line.
struct CorpusFormatError : std::runtime_error {
  CorpusFormatError(const std::string& message, int64_t line) : std::runtime_error(message), line(line) {}
  int64_t line;  // 1-based; 0 = the file as a whole
};

// Arrow string-array layout: offsets (n + 1, starting at 0) and the concatenated UTF-8 bytes.
struct StringColumn {
  std::vector<int32_t> offsets{0};
  std::vector<uint8_t> data;
  void append(const char* p, size_t n) {
    data.insert(data.end(), p, p + n);
    offsets.push_back(int32_t(data.size()));
  }
  size_t size() const { return offsets.size() - 1; }
};

struct TextBatch {
  StringColumn text;
  StringColumn doc_id;
  std::vector<int64_t> line;  // 1-based line of each record in its file
};

class JsonlReader {
 public:
  // The longest line (one record) read: past it the reader stops with an error naming the line,
  // instead of buffering a line that a small compressed file can make as large as memory.
  static constexpr size_t kMaxLineBytes = size_t(256) << 20;

  // `path` is read (a gzip file, told by its magic bytes, is inflated) unless `fed`, in which case
  // bytes arrive through feed(). `name` is what default doc ids and messages call the file.
  JsonlReader(std::string path, std::string name, std::string text_field, std::string id_field, bool skip_errors,
              bool fed);
  ~JsonlReader();
  JsonlReader(const JsonlReader&) = delete;
  JsonlReader& operator=(const JsonlReader&) = delete;

  // Fills `out` with up to max_records records / about max_bytes of text. Returns false when
  // nothing was read: end of file, or (fed mode) no complete line pending. Throws CorpusFormatError.
  bool next_batch(size_t max_records, size_t max_bytes, TextBatch& out);
  void feed(const char* data, size_t n);
  void finish_input() { eof_ = true; }
  // The input is one byte range of a file cut into several (a split read by one task): the whole-file
  // checks (empty, only blank lines) are left to whoever sees every range; a byte-order mark is
  // stripped only in the range that starts the file. Line numbers count from the range's start.
  void set_part_of_file(bool starts_file) {
    part_of_file_ = true;
    starts_file_ = starts_file;
  }

  int64_t records() const { return records_; }
  int64_t skipped() const { return skipped_; }
  int64_t bytes_consumed() const { return bytes_consumed_; }
  int64_t nonblank_lines() const { return nonblank_lines_; }
  int64_t lines() const { return line_no_; }
  const std::vector<std::string>& skipped_examples() const { return skipped_examples_; }

 private:
  bool fill_buffer();
  size_t read_plain(char* out, size_t room);
  size_t read_gzip(char* out, size_t room);
  bool read_input();
  void handle_line(const char* p, size_t n, TextBatch& out);
  [[noreturn]] void reject_long_line(size_t seen) const;  // a line past kMaxLineBytes: CorpusFormatError
  void reject(const std::string& message, int64_t line);
  void check_end_of_file();

  std::string path_, name_, text_field_, id_field_;
  bool skip_errors_, fed_;
  bool part_of_file_ = false, starts_file_ = true;
  // The file, read a block at a time into input_. A gzip file is inflated member after member, and
  // whatever follows the last member must be another member (zlib's gzread ignored anything else).
  std::FILE* file_ = nullptr;
  std::vector<unsigned char> input_;
  z_stream zs_{};          // next_in / avail_in: the unread part of input_ (plain files too)
  gz_header gz_head_{};    // the current member's header: done == 1 once it has been read whole
  bool gzip_ = false, inflating_ = false, in_member_ = false;
  int64_t members_ = 0, member_start_ = 0, raw_read_ = 0;
  std::vector<char> buffer_;
  size_t buffer_pos_ = 0;
  // Bytes from buffer_pos_ on already searched for '\n': a line arriving a block at a time is scanned
  // once, not again after every block (which was quadratic in the line's length).
  size_t scanned_ = 0;
  bool eof_ = false;
  bool end_checked_ = false;
  int64_t line_no_ = 0;
  int64_t records_ = 0;
  int64_t nonblank_lines_ = 0;
  int64_t skipped_ = 0;
  int64_t bytes_seen_ = 0;
  int64_t bytes_consumed_ = 0;
  std::vector<std::string> skipped_examples_;
};

}  // namespace nextlong
