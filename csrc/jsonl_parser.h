// Pulls the text field (and an optional id field) out of one JSON-lines record, validating the
// whole record on the way: the corpus engine must reject bad input rather than guess. Other fields
// are checked for syntax and skipped without being decoded, which keeps the scan fast.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace nextlong {

// Returns the byte offset of the first invalid UTF-8 sequence, or npos when `s` is valid UTF-8
// (overlong forms, UTF-16 surrogates and code points above U+10FFFF are invalid).
size_t find_invalid_utf8(std::string_view s);

// Number of Unicode code points in valid UTF-8 (what Python's len() gives).
size_t count_code_points(std::string_view s);

struct JsonRecordFields {
  std::string text;
  std::string id;
  bool has_id = false;
};

// Parses `line` (valid UTF-8, no trailing newline) as one JSON object and extracts `text_field`
// (must be a string) and `id_field` (a string or an integer; empty name = not wanted).
// Returns an empty string on success, else a message saying what was expected and where (column).
std::string parse_jsonl_record(std::string_view line, std::string_view text_field, std::string_view id_field,
                               JsonRecordFields& out);

}  // namespace nextlong
