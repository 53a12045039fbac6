#include "jsonl_parser.h"

#include <cstdint>
#include <cstring>

namespace nextlong {

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;  // continuation byte without a lead, or 0xC0/0xC1/0xF5+ leads
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = p[i + k];
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return i;
    i += len;
  }
  return std::string_view::npos;
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

namespace {

// Recursive-descent JSON scanner over one line. `pos` is a byte index; errors carry a column.
class RecordScanner {
 public:
  explicit RecordScanner(std::string_view s) : s_(s) {}

  std::string error;
  size_t pos = 0;

  bool fail(const std::string& what) {
    if (error.empty()) error = what + " at column " + std::to_string(pos + 1);
    return false;
  }
  void skip_ws() {
    while (pos < s_.size() && (s_[pos] == ' ' || s_[pos] == '\t' || s_[pos] == '\r' || s_[pos] == '\n')) ++pos;
  }
  bool at_end() const { return pos >= s_.size(); }
  char peek() const { return s_[pos]; }

  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  bool read_hex4(uint32_t& v) {
    if (pos + 4 > s_.size()) return fail("expected 4 hex digits after \\u");
    v = 0;
    for (int k = 0; k < 4; ++k) {
      int h = hex_value(s_[pos + k]);
      if (h < 0) return fail("expected 4 hex digits after \\u");
      v = v * 16 + uint32_t(h);
    }
    pos += 4;
    return true;
  }
  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(char(cp));
    } else if (cp < 0x800) {
      out.push_back(char(0xC0 | (cp >> 6)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(char(0xE0 | (cp >> 12)));
      out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(char(0xF0 | (cp >> 18)));
      out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    }
  }

  // Parses a string starting at the opening quote. Decodes into `out` when non-null.
  bool parse_string(std::string* out) {
    ++pos;  // opening quote
    for (;;) {
      size_t run = pos;
      while (run < s_.size()) {
        unsigned char c = static_cast<unsigned char>(s_[run]);
        if (c == '"' || c == '\\' || c < 0x20) break;
        ++run;
      }
      if (out) out->append(s_.data() + pos, run - pos);
      pos = run;
      if (pos >= s_.size()) return fail("unterminated string");
      char c = s_[pos];
      if (c == '"') {
        ++pos;
        return true;
      }
      if (c != '\\') return fail("control character in string (must be escaped)");
      ++pos;
      if (pos >= s_.size()) return fail("unterminated escape");
      char e = s_[pos++];
      char lit;
      switch (e) {
        case '"': lit = '"'; break;
        case '\\': lit = '\\'; break;
        case '/': lit = '/'; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!read_hex4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone low surrogate \\u escape (not valid Unicode)");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (pos + 2 > s_.size() || s_[pos] != '\\' || s_[pos + 1] != 'u')
              return fail("high surrogate \\u escape without its low surrogate");
            pos += 2;
            uint32_t lo;
            if (!read_hex4(lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) return fail("high surrogate \\u escape without its low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          if (out) append_utf8(*out, cp);
          continue;
        }
        default:
          --pos;
          return fail(std::string("invalid escape \\") + e);
      }
      if (out) out->push_back(lit);
    }
  }

  // JSON number grammar; the literal's text is kept in `lit` (for integer ids).
  bool parse_number(std::string_view* lit, bool* is_integer) {
    size_t start = pos;
    bool integer = true;
    if (s_[pos] == '-') ++pos;
    if (pos >= s_.size()) return fail("expected a digit");
    if (s_[pos] == '0') {
      ++pos;
    } else if (s_[pos] >= '1' && s_[pos] <= '9') {
      while (pos < s_.size() && s_[pos] >= '0' && s_[pos] <= '9') ++pos;
    } else {
      return fail("expected a digit");
    }
    if (pos < s_.size() && s_[pos] == '.') {
      integer = false;
      ++pos;
      if (pos >= s_.size() || s_[pos] < '0' || s_[pos] > '9') return fail("expected a digit after '.'");
      while (pos < s_.size() && s_[pos] >= '0' && s_[pos] <= '9') ++pos;
    }
    if (pos < s_.size() && (s_[pos] == 'e' || s_[pos] == 'E')) {
      integer = false;
      ++pos;
      if (pos < s_.size() && (s_[pos] == '+' || s_[pos] == '-')) ++pos;
      if (pos >= s_.size() || s_[pos] < '0' || s_[pos] > '9') return fail("expected a digit in exponent");
      while (pos < s_.size() && s_[pos] >= '0' && s_[pos] <= '9') ++pos;
    }
    if (lit) *lit = s_.substr(start, pos - start);
    if (is_integer) *is_integer = integer;
    return true;
  }

  bool parse_literal(const char* word) {
    size_t n = std::strlen(word);
    if (s_.substr(pos, n) != std::string_view(word, n)) return fail("invalid JSON value");
    pos += n;
    return true;
  }

  // Validates and skips any value.
  bool skip_value(int depth) {
    if (depth > 512) return fail("nesting too deep");
    skip_ws();
    if (at_end()) return fail("expected a value");
    char c = peek();
    switch (c) {
      case '"': return parse_string(nullptr);
      case '{': {
        ++pos;
        skip_ws();
        if (!at_end() && peek() == '}') { ++pos; return true; }
        for (;;) {
          skip_ws();
          if (at_end() || peek() != '"') return fail("expected a string key");
          if (!parse_string(nullptr)) return false;
          skip_ws();
          if (at_end() || peek() != ':') return fail("expected ':'");
          ++pos;
          if (!skip_value(depth + 1)) return false;
          skip_ws();
          if (at_end()) return fail("expected ',' or '}'");
          if (peek() == ',') { ++pos; continue; }
          if (peek() == '}') { ++pos; return true; }
          return fail("expected ',' or '}'");
        }
      }
      case '[': {
        ++pos;
        skip_ws();
        if (!at_end() && peek() == ']') { ++pos; return true; }
        for (;;) {
          if (!skip_value(depth + 1)) return false;
          skip_ws();
          if (at_end()) return fail("expected ',' or ']'");
          if (peek() == ',') { ++pos; continue; }
          if (peek() == ']') { ++pos; return true; }
          return fail("expected ',' or ']'");
        }
      }
      case 't': return parse_literal("true");
      case 'f': return parse_literal("false");
      case 'n': return parse_literal("null");
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(nullptr, nullptr);
        return fail("invalid JSON value");
    }
  }

  static const char* kind_name(char c) {
    switch (c) {
      case '{': return "an object";
      case '[': return "an array";
      case 't': case 'f': return "a boolean";
      case 'n': return "null";
      default: return "a number";
    }
  }

  std::string_view s_;
};

}  // namespace

std::string parse_jsonl_record(std::string_view line, std::string_view text_field, std::string_view id_field,
                               JsonRecordFields& out) {
  RecordScanner sc(line);
  out.text.clear();
  out.id.clear();
  out.has_id = false;
  bool has_text = false;
  std::string key;
  sc.skip_ws();
  if (sc.at_end() || sc.peek() != '{') {
    sc.fail("expected a JSON object '{'");
    return sc.error;
  }
  ++sc.pos;
  sc.skip_ws();
  if (!sc.at_end() && sc.peek() == '}') {
    ++sc.pos;
  } else {
    for (;;) {
      sc.skip_ws();
      if (sc.at_end() || sc.peek() != '"') {
        sc.fail("expected a string key");
        return sc.error;
      }
      key.clear();
      if (!sc.parse_string(&key)) return sc.error;
      sc.skip_ws();
      if (sc.at_end() || sc.peek() != ':') {
        sc.fail("expected ':'");
        return sc.error;
      }
      ++sc.pos;
      sc.skip_ws();
      if (sc.at_end()) {
        sc.fail("expected a value");
        return sc.error;
      }
      const bool is_text = key == text_field;
      const bool is_id = !id_field.empty() && key == id_field;
      if (is_text || is_id) {
        char c = sc.peek();
        if (c == '"') {
          // Duplicate keys: the last one wins, as in Python's json.
          std::string& target = is_text ? out.text : out.id;
          target.clear();
          if (!sc.parse_string(&target)) return sc.error;
          if (is_text) has_text = true;
          if (is_id) {
            if (is_text) out.id = out.text;
            out.has_id = true;
          }
        } else {
          size_t value_start = sc.pos;
          std::string_view lit;
          bool integer = false;
          bool ok = (c == '-' || (c >= '0' && c <= '9')) ? sc.parse_number(&lit, &integer) : sc.skip_value(1);
          if (!ok) return sc.error;
          if (is_text) {
            sc.pos = value_start;
            return "field '" + std::string(text_field) + "' is " + RecordScanner::kind_name(c) +
                   ", expected a string";
          }
          if (!integer) {
            sc.pos = value_start;
            return "id field '" + std::string(id_field) + "' is " + RecordScanner::kind_name(c) +
                   (c == '-' || (c >= '0' && c <= '9') ? " (not an integer)" : "") + ", expected a string or an integer";
          }
          out.id.assign(lit.data(), lit.size());
          out.has_id = true;
        }
      } else if (!sc.skip_value(1)) {
        return sc.error;
      }
      sc.skip_ws();
      if (sc.at_end()) {
        sc.fail("expected ',' or '}'");
        return sc.error;
      }
      if (sc.peek() == ',') {
        ++sc.pos;
        continue;
      }
      if (sc.peek() == '}') {
        ++sc.pos;
        break;
      }
      sc.fail("expected ',' or '}'");
      return sc.error;
    }
  }
  sc.skip_ws();
  if (!sc.at_end()) {
    sc.fail("unexpected data after the JSON object (one record per line)");
    return sc.error;
  }
  if (!has_text) return "record has no field '" + std::string(text_field) + "' (expected a string)";
  if (!id_field.empty() && !out.has_id) return "record has no id field '" + std::string(id_field) + "'";
  return {};
}

}  // namespace nextlong
