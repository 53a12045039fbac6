#include "corpus_reader.h"

#include <climits>
#include <cstring>

#include "jsonl_parser.h"

namespace nextlong {

namespace {
constexpr size_t kReadBlock = 1 << 20;
constexpr size_t kMaxSkippedExamples = 5;
}  // namespace

JsonlReader::JsonlReader(std::string path, std::string name, std::string text_field, std::string id_field,
                         bool skip_errors, bool fed)
    : path_(std::move(path)),
      name_(std::move(name)),
      text_field_(std::move(text_field)),
      id_field_(std::move(id_field)),
      skip_errors_(skip_errors),
      fed_(fed) {
  if (!fed_) {
    gz_ = gzopen(path_.c_str(), "rb");
    if (!gz_) throw CorpusFormatError("cannot open file (" + std::string(std::strerror(errno)) + ")", 0);
    gzbuffer(gz_, 1 << 18);
  }
}

JsonlReader::~JsonlReader() {
  if (gz_) gzclose(gz_);
}

void JsonlReader::feed(const char* data, size_t n) {
  if (buffer_pos_ > 0 && buffer_pos_ >= buffer_.size() / 2) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + std::ptrdiff_t(buffer_pos_));
    buffer_pos_ = 0;
  }
  buffer_.insert(buffer_.end(), data, data + n);
  bytes_seen_ += int64_t(n);
}

// Reads one more block from zlib. Returns false at end of file.
bool JsonlReader::fill_buffer() {
  if (buffer_pos_ > 0) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + std::ptrdiff_t(buffer_pos_));
    buffer_pos_ = 0;
  }
  size_t old = buffer_.size();
  buffer_.resize(old + kReadBlock);
  int got = gzread(gz_, buffer_.data() + old, unsigned(kReadBlock));
  if (got < 0) {
    int errnum = 0;
    const char* msg = gzerror(gz_, &errnum);
    buffer_.resize(old);
    throw CorpusFormatError(std::string("cannot decompress/read file: ") + msg + " (a corrupt or truncated gzip stream?)",
                            line_no_ + 1);
  }
  buffer_.resize(old + size_t(got));
  bytes_seen_ += got;
  if (got == 0) {
    int errnum = 0;
    const char* msg = gzerror(gz_, &errnum);
    if (errnum != Z_OK && errnum != Z_STREAM_END)
      throw CorpusFormatError(std::string("cannot decompress file: ") + msg + " (a corrupt or truncated gzip stream?)",
                              line_no_ + 1);
    return false;
  }
  return true;
}

void JsonlReader::reject(const std::string& message, int64_t line) {
  if (!skip_errors_) throw CorpusFormatError(message, line);
  ++skipped_;
  if (skipped_examples_.size() < kMaxSkippedExamples)
    skipped_examples_.push_back(name_ + (line > 0 ? ":" + std::to_string(line) : std::string()) + ": " + message);
}

void JsonlReader::handle_line(const char* p, size_t n, TextBatch& out) {
  ++line_no_;
  bytes_consumed_ += int64_t(n) + 1;
  if (line_no_ == 1 && starts_file_ && n >= 3 && std::memcmp(p, "\xEF\xBB\xBF", 3) == 0) {  // UTF-8 byte-order mark
    p += 3;
    n -= 3;
  }
  if (n > 0 && p[n - 1] == '\r') --n;
  size_t k = 0;
  while (k < n && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r')) ++k;
  if (k == n) return;  // blank lines carry no record
  ++nonblank_lines_;
  std::string_view line(p, n);
  size_t bad = find_invalid_utf8(line);
  if (bad != std::string_view::npos) {
    reject("invalid UTF-8 at byte column " + std::to_string(bad + 1) + " (expected UTF-8 JSON)", line_no_);
    return;
  }
  thread_local JsonRecordFields fields;
  std::string err = parse_jsonl_record(line, text_field_, id_field_, fields);
  if (!err.empty()) {
    reject(err, line_no_);
    return;
  }
  if (out.text.data.size() + fields.text.size() > size_t(INT32_MAX))
    throw CorpusFormatError("a single record holds more than 2 GiB of text", line_no_);
  out.text.append(fields.text.data(), fields.text.size());
  if (fields.has_id) {
    out.doc_id.append(fields.id.data(), fields.id.size());
  } else {
    std::string id = name_ + ":" + std::to_string(line_no_);
    out.doc_id.append(id.data(), id.size());
  }
  out.line.push_back(line_no_);
  ++records_;
}

void JsonlReader::check_end_of_file() {
  if (end_checked_) return;
  end_checked_ = true;
  if (part_of_file_) return;
  if (bytes_seen_ == 0)
    reject("empty file (expected JSON lines, one object per line)", 0);
  else if (nonblank_lines_ == 0)
    reject("file holds only blank lines (expected JSON lines, one object per line)", 0);
}

bool JsonlReader::next_batch(size_t max_records, size_t max_bytes, TextBatch& out) {
  size_t start_records = out.text.size();
  while (out.text.size() - start_records < max_records && out.text.data.size() < max_bytes) {
    const char* base = buffer_.data();
    const size_t size = buffer_.size();
    const void* nl = buffer_pos_ < size ? std::memchr(base + buffer_pos_, '\n', size - buffer_pos_) : nullptr;
    if (nl) {
      size_t end = size_t(static_cast<const char*>(nl) - base);
      size_t begin = buffer_pos_;
      buffer_pos_ = end + 1;
      handle_line(base + begin, end - begin, out);
      continue;
    }
    if (!eof_) {
      if (fed_) break;  // wait for more input
      if (!fill_buffer()) eof_ = true;
      continue;
    }
    if (buffer_pos_ < size) {  // last line without a newline
      size_t begin = buffer_pos_;
      buffer_pos_ = size;
      handle_line(base + begin, size - begin, out);
      bytes_consumed_ -= 1;
      continue;
    }
    check_end_of_file();
    break;
  }
  return out.text.size() > start_records;
}

}  // namespace nextlong
