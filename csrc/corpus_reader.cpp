#include "corpus_reader.h"

#include <algorithm>
#include <cerrno>
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
  if (fed_) return;
  file_ = std::fopen(path_.c_str(), "rb");
  if (!file_) throw CorpusFormatError("cannot open file (" + std::string(std::strerror(errno)) + ")", 0);
  input_.resize(kReadBlock);
  try {
    read_input();
  } catch (...) {
    std::fclose(file_);
    throw;
  }
  gzip_ = zs_.avail_in >= 2 && input_[0] == 0x1f && input_[1] == 0x8b;
  if (gzip_) {
    if (inflateInit2(&zs_, 15 + 16) != Z_OK) {  // 16: gzip members only
      std::fclose(file_);
      throw CorpusFormatError("zlib cannot start inflating (out of memory?)", 0);
    }
    inflating_ = true;
  }
}

JsonlReader::~JsonlReader() {
  if (inflating_) inflateEnd(&zs_);
  if (file_) std::fclose(file_);
}

void JsonlReader::feed(const char* data, size_t n) {
  if (buffer_pos_ > 0 && buffer_pos_ >= buffer_.size() / 2) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + std::ptrdiff_t(buffer_pos_));
    buffer_pos_ = 0;
  }
  buffer_.insert(buffer_.end(), data, data + n);
  bytes_seen_ += int64_t(n);
}

// Reads one more block of the file (inflated if gzip) into buffer_. Returns false at end of file.
bool JsonlReader::fill_buffer() {
  if (buffer_pos_ > 0) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + std::ptrdiff_t(buffer_pos_));
    buffer_pos_ = 0;
  }
  size_t old = buffer_.size();
  buffer_.resize(old + kReadBlock);
  size_t got = 0;
  try {
    got = gzip_ ? read_gzip(buffer_.data() + old, kReadBlock) : read_plain(buffer_.data() + old, kReadBlock);
  } catch (...) {
    buffer_.resize(old);
    throw;
  }
  buffer_.resize(old + got);
  bytes_seen_ += int64_t(got);
  return got > 0;
}

// The next block of the raw file into input_ (zs_.next_in / avail_in). Returns false at its end.
bool JsonlReader::read_input() {
  size_t got = std::fread(input_.data(), 1, input_.size(), file_);
  if (got == 0 && std::ferror(file_))
    throw CorpusFormatError("cannot read file (" + std::string(std::strerror(errno)) + ")", line_no_ + 1);
  raw_read_ += int64_t(got);
  zs_.next_in = input_.data();
  zs_.avail_in = unsigned(got);
  return got > 0;
}

size_t JsonlReader::read_plain(char* out, size_t room) {
  if (zs_.avail_in == 0 && !read_input()) return 0;
  size_t n = std::min(room, size_t(zs_.avail_in));
  std::memcpy(out, zs_.next_in, n);
  zs_.next_in += n;
  zs_.avail_in -= unsigned(n);
  return n;
}

// Inflates gzip members one after another (concatenated members are valid gzip, as `cat a.gz b.gz`
// makes). Bytes after the last member that do not start another one are an error naming their
// offset: zlib's gzread ignored them, so a damaged or appended-to file read as if whole.
size_t JsonlReader::read_gzip(char* out, size_t room) {
  // Where a member begins, for messages: lines are no guide, the reader inflates ahead of the parser.
  auto member = [&] {
    return "gzip member " + std::to_string(members_) + " (from byte offset " + std::to_string(member_start_) + ")";
  };
  auto trailing_junk = [&] {
    return CorpusFormatError("unexpected bytes after the end of the gzip data, from byte offset " +
                                 std::to_string(member_start_) + " on (not another gzip member): the file was "
                                 "damaged or appended to (gzip -t warns of it too)",
                             0);
  };
  zs_.next_out = reinterpret_cast<Bytef*>(out);
  zs_.avail_out = unsigned(room);
  while (zs_.avail_out > 0) {
    if (zs_.avail_in == 0 && !read_input()) {
      if (!in_member_) break;  // the last member ended with the file
      if (members_ > 1 && gz_head_.done != 1) throw trailing_junk();  // 1: the header was read whole
      throw CorpusFormatError("truncated gzip file: it ends inside " + member() +
                                  "; the records in it are lost (gzip -t reports the same)",
                              0);
    }
    if (!in_member_) {  // a member starts here: the first, or one concatenated after the last
      in_member_ = true;
      ++members_;
      member_start_ = raw_read_ - int64_t(zs_.avail_in);
      if (members_ > 1) inflateReset(&zs_);
      gz_head_ = gz_header{};
      inflateGetHeader(&zs_, &gz_head_);
    }
    int rc = inflate(&zs_, Z_NO_FLUSH);
    if (rc == Z_STREAM_END) {
      in_member_ = false;
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {  // Z_BUF_ERROR: it needs more input, read above
      if (members_ > 1 && gz_head_.done != 1) throw trailing_junk();
      throw CorpusFormatError("corrupt gzip data in " + member() + ": " + (zs_.msg ? zs_.msg : "inflate failed") +
                                  "; gzip -t reports the same",
                              0);
    }
  }
  return room - zs_.avail_out;
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
  // Arrow's int32 offsets: next_batch ends a batch once its ids reach max_bytes, so only a max_bytes
  // near 2 GiB gets here.
  if (out.doc_id.data.size() + (fields.has_id ? fields.id.size() : name_.size() + 21) > size_t(INT32_MAX))
    throw CorpusFormatError("the ids of one batch hold more than 2 GiB (use a smaller batch_bytes)", line_no_);
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

[[noreturn]] void JsonlReader::reject_long_line(size_t seen) const {
  throw CorpusFormatError("line longer than " + std::to_string(kMaxLineBytes >> 20) + " MiB (at least " +
                              std::to_string(seen) + " bytes); one record may hold at most that much",
                          line_no_ + 1);
}

bool JsonlReader::next_batch(size_t max_records, size_t max_bytes, TextBatch& out) {
  size_t start_records = out.text.size();
  // Ids count apart from the text: long ids in a batch of short texts overflowed the int32 offsets.
  while (out.text.size() - start_records < max_records && out.text.data.size() < max_bytes &&
         out.doc_id.data.size() < max_bytes) {
    const char* base = buffer_.data();
    const size_t size = buffer_.size();
    const size_t from = buffer_pos_ + scanned_;
    const void* nl = from < size ? std::memchr(base + from, '\n', size - from) : nullptr;
    if (nl) {
      size_t end = size_t(static_cast<const char*>(nl) - base);
      size_t begin = buffer_pos_;
      // the limit holds for a line whose newline came in the same read that passed it, too
      if (end - begin > kMaxLineBytes) reject_long_line(end - begin);
      buffer_pos_ = end + 1;
      scanned_ = 0;
      handle_line(base + begin, end - begin, out);
      continue;
    }
    scanned_ = size - buffer_pos_;
    if (scanned_ > kMaxLineBytes) reject_long_line(scanned_);
    if (!eof_) {
      if (fed_) break;  // wait for more input
      if (!fill_buffer()) eof_ = true;
      continue;
    }
    if (buffer_pos_ < size) {  // last line without a newline
      size_t begin = buffer_pos_;
      if (size - begin > kMaxLineBytes) reject_long_line(size - begin);
      buffer_pos_ = size;
      scanned_ = 0;
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
