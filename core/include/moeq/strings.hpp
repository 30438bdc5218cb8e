// Small string helpers shared by the core and the tools.
#pragma once
#include <charconv>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace moeq {

// "a,b,,c" -> {"a", "b", "c"}: comma-separated items, empty ones dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// "a,,b" -> {"a", "", "b"}: unlike split_list, keeps the empty items so they can be refused.
inline std::vector<std::string> split_keeping_empty(const std::string& s) {
  std::vector<std::string> out;
  size_t from = 0;
  for (size_t comma; (comma = s.find(',', from)) != std::string::npos; from = comma + 1)
    out.push_back(s.substr(from, comma - from));
  out.push_back(s.substr(from));
  return out;
}

// The whole of `s` as a positive decimal integer, else nullopt.
inline std::optional<int64_t> positive_integer(const std::string& s) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 1) return std::nullopt;
  return v;
}

// Every item of the comma list `s` as a positive integer; nullopt if any is not one.
inline std::optional<std::vector<int64_t>> positive_integers(const std::string& s) {
  std::vector<int64_t> out;
  for (const std::string& item : split_keeping_empty(s)) {
    const std::optional<int64_t> v = positive_integer(item);
    if (!v) return std::nullopt;
    out.push_back(*v);
  }
  return out;
}

// {8, 64} -> "[8, 64]": a tensor shape as messages print it.
inline std::string shape_string(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// A name from a file as messages print it: control bytes (NUL, newline, escape, DEL) as \xNN
// and backslashes doubled, so that a hostile name can neither cut a message short nor pass for
// another name.
inline std::string printable_name(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string o;
  o.reserve(s.size());
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\\') {
      o += "\\\\";
    } else if (c < 0x20 || c == 0x7f) {
      o += "\\x";
      o += hex[c >> 4];
      o += hex[c & 15];
    } else {
      o += ch;
    }
  }
  return o;
}

// True when the name holds a control byte (which no real tensor or module name has).
inline bool has_control_byte(const std::string& s) {
  for (const char ch : s)
    if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) == 0x7f) return true;
  return false;
}

}  // namespace moeq
