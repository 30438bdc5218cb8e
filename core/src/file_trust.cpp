// Ownership and permission rules for code the host runs, and the ELF dynamic-segment reader
// that finds where the loader would take a plugin's dependencies from (docs/DESIGN.md §4).
#include <moeq/file_trust.hpp>

#include <moeq/error.hpp>

#include <elf.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <utility>

namespace fs = std::filesystem;

namespace moeq::trust {
namespace {

// A loaded object's dependencies nest this deep at most before the walk gives up (and refuses).
constexpr int kMaxDependencyDepth = 16;

enum class Rule {
  exclusive,  // writable by its owner only: a file, or a directory entries are taken from
  sticky_ok,  // a directory above: group or others may write it when its sticky bit is set
};

std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode) & 07777u);
  return buf;
}

// `label` names the path ("directory /opt above the plugin"); empty when the rule holds.
std::string stat_problem(const fs::path& path, const std::string& label, uint32_t owner_uid, Rule rule) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return "cannot stat " + label + ": " + std::strerror(errno);
  const bool sticky_ok = rule == Rule::sticky_ok;
  const bool excused = sticky_ok && (st.st_mode & S_ISVTX);
  const std::string found = " (mode " + octal_mode(st.st_mode) + ")";
  const std::string expected = sticky_ok ? "; expected write permission for its owner only, or the sticky bit"
                                         : "; expected write permission for its owner only";
  const std::string unless = sticky_ok ? " without the sticky bit" : "";
  if ((st.st_mode & S_IWOTH) && !excused) return label + " is writable by other users" + unless + found + expected;
  if ((st.st_mode & S_IWGRP) && !excused) return label + " is writable by its group" + unless + found + expected;
  if (st.st_uid != 0 && st.st_uid != owner_uid)
    return label + " is owned by uid " + std::to_string(st.st_uid) + ", not by root or this user (uid " +
           std::to_string(owner_uid) + ")";
  return {};
}

// Absolute, lexically normal, no trailing separator (so parent_path walks up one directory).
fs::path absolute_normal(const fs::path& p) {
  std::error_code ec;
  fs::path out = fs::absolute(p, ec);
  if (ec) out = p;
  out = out.lexically_normal();
  if (!out.has_filename() && out != out.root_path()) out = out.parent_path();
  return out;
}

void push_if(std::vector<std::string>& problems, std::string problem) {
  if (!problem.empty()) problems.push_back(std::move(problem));
}

// ------------------------------------------------------------------------- ELF reading ---

bool read_at(std::ifstream& in, uint64_t offset, void* out, uint64_t bytes) {
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(static_cast<char*>(out), static_cast<std::streamsize>(bytes));
  return in.gcount() == static_cast<std::streamsize>(bytes);
}

[[noreturn]] void bad_elf(const fs::path& file, const std::string& why) { fail(file.string() + ": " + why); }

template <class Ehdr, class Phdr, class Dyn>
ElfDynamic read_dynamic(std::ifstream& in, const fs::path& file, uint64_t file_size) {
  auto bad = [&](const std::string& why) { bad_elf(file, why); };
  Ehdr eh{};
  if (!read_at(in, 0, &eh, sizeof eh)) bad("file too short for an ELF header");
  if (eh.e_phnum == 0) return {};
  if (eh.e_phentsize != sizeof(Phdr))
    bad("program header entries of " + std::to_string(eh.e_phentsize) + " bytes, expected " +
        std::to_string(sizeof(Phdr)));
  if (eh.e_phnum == PN_XNUM) bad("extended program header numbering (PN_XNUM), which the loader does not take");
  const uint64_t ph_bytes = uint64_t{eh.e_phnum} * sizeof(Phdr);
  if (eh.e_phoff > file_size || ph_bytes > file_size - eh.e_phoff) bad("program headers lie outside the file");
  std::vector<Phdr> ph(eh.e_phnum);
  if (!read_at(in, eh.e_phoff, ph.data(), ph_bytes)) bad("cannot read the program headers");

  const Phdr* dynamic = nullptr;
  for (const Phdr& p : ph)
    if (p.p_type == PT_DYNAMIC) {
      dynamic = &p;
      break;
    }
  if (dynamic == nullptr) return {};
  if (dynamic->p_offset > file_size || dynamic->p_filesz > file_size - dynamic->p_offset)
    bad("PT_DYNAMIC lies outside the file");
  std::vector<Dyn> entries(dynamic->p_filesz / sizeof(Dyn));
  if (!read_at(in, dynamic->p_offset, entries.data(), entries.size() * sizeof(Dyn)))
    bad("cannot read the dynamic segment");

  uint64_t strtab = 0, strsz = 0;
  bool has_strtab = false;
  std::vector<uint64_t> needed, rpath, runpath;
  for (const Dyn& d : entries) {
    if (d.d_tag == DT_NULL) break;
    switch (d.d_tag) {
      case DT_STRTAB:
        strtab = d.d_un.d_ptr;
        has_strtab = true;
        break;
      case DT_STRSZ: strsz = d.d_un.d_val; break;
      case DT_NEEDED: needed.push_back(d.d_un.d_val); break;
      case DT_RPATH: rpath.push_back(d.d_un.d_val); break;
      case DT_RUNPATH: runpath.push_back(d.d_un.d_val); break;
      default: break;
    }
  }
  ElfDynamic out;
  out.has_rpath = !rpath.empty();
  out.has_runpath = !runpath.empty();
  if (needed.empty() && rpath.empty() && runpath.empty()) return out;
  if (!has_strtab || strsz == 0) bad("DT_NEEDED, DT_RPATH or DT_RUNPATH without a string table (DT_STRTAB, DT_STRSZ)");

  // DT_STRTAB is an address: the loadable segment that holds it says where it is in the file.
  uint64_t table_offset = 0;
  bool mapped = false;
  for (const Phdr& p : ph) {
    if (p.p_type != PT_LOAD || strtab < p.p_vaddr || strtab - p.p_vaddr >= p.p_filesz) continue;
    if (strsz > p.p_filesz - (strtab - p.p_vaddr)) bad("the string table runs past its loadable segment");
    table_offset = p.p_offset + (strtab - p.p_vaddr);
    mapped = true;
    break;
  }
  if (!mapped) bad("no loadable segment holds the string table address");
  if (table_offset > file_size || strsz > file_size - table_offset) bad("the string table lies outside the file");

  // Only the strings named are read: a large library's table holds every symbol name too.
  auto string_at = [&](uint64_t offset) -> std::string {
    if (offset >= strsz) bad("string offset " + std::to_string(offset) + " is past the string table");
    std::string out;
    char chunk[4096];
    for (uint64_t at = offset; at < strsz;) {
      const uint64_t n = std::min<uint64_t>(sizeof chunk, strsz - at);
      if (!read_at(in, table_offset + at, chunk, n)) bad("cannot read the string table");
      if (const void* nul = std::memchr(chunk, '\0', n)) {
        out.append(chunk, static_cast<size_t>(static_cast<const char*>(nul) - chunk));
        return out;
      }
      out.append(chunk, n);
      at += n;
    }
    bad_elf(file, "the string at offset " + std::to_string(offset) + " is not terminated");
  };
  auto split = [&](const std::vector<uint64_t>& offsets, std::vector<std::string>& into) {
    for (uint64_t o : offsets) {
      const std::string list = string_at(o);
      size_t start = 0;
      while (true) {
        const size_t colon = list.find(':', start);
        into.push_back(list.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
        if (colon == std::string::npos) break;
        start = colon + 1;
      }
    }
  };
  for (uint64_t o : needed) out.needed.push_back(string_at(o));
  split(rpath, out.rpath);
  split(runpath, out.runpath);
  return out;
}

// --------------------------------------------------------------------- dependency walk ---

// Walks what the loader would take code from, collecting every problem.
class DependencyWalk {
 public:
  explicit DependencyWalk(uint32_t owner_uid) : owner_uid_(owner_uid) {}

  // `inherited`: the DT_RPATH directories of the objects that pulled this one in, which the
  // loader searches for its dependencies too when it has no DT_RUNPATH of its own.
  void object(const fs::path& file, const std::vector<fs::path>& inherited, int depth) {
    std::error_code ec;
    const fs::path real = fs::canonical(file, ec);
    if (ec) {
      problems_.push_back("cannot resolve " + file.string() + ": " + ec.message());
      return;
    }
    if (!visited_.insert(real).second) return;
    if (depth > kMaxDependencyDepth) {
      problems_.push_back("dependencies of " + file.string() + " nest deeper than " +
                          std::to_string(kMaxDependencyDepth) + " levels");
      return;
    }
    ElfDynamic dyn;
    try {
      dyn = read_elf_dynamic(real);
    } catch (const Error& e) {
      problems_.push_back(std::string("cannot read the dynamic segment: ") + e.what());
      return;
    }
    // $ORIGIN is the directory the object was opened from; where it really lives may differ
    // (a symlink), and both are held to the rules.
    std::vector<fs::path> origins = {absolute_normal(file).parent_path()};
    if (real.parent_path() != origins.front()) origins.push_back(real.parent_path());

    const std::vector<fs::path> runpath = directories(dyn.runpath, "RUNPATH", file, origins);
    const std::vector<fs::path> rpath = directories(dyn.rpath, "RPATH", file, origins);
    // The loader ignores an object's DT_RPATH when it has a DT_RUNPATH, and searches the
    // DT_RPATH of the objects above only for objects without one.
    std::vector<fs::path> search = dyn.has_runpath ? runpath : rpath;
    std::vector<fs::path> passed_on = dyn.has_runpath ? std::vector<fs::path>{} : rpath;
    if (!dyn.has_runpath) {
      search.insert(search.end(), inherited.begin(), inherited.end());
      passed_on.insert(passed_on.end(), inherited.begin(), inherited.end());
    }

    for (const std::string& name : dyn.needed) {
      const std::string context = "DT_NEEDED '" + name + "' of " + file.string();
      if (name.find('/') != std::string::npos || name.find('$') != std::string::npos) {
        // A name with a slash is opened as that path (after $ORIGIN), not searched for.
        for (const fs::path& origin : origins) {
          std::string expanded;
          if (!expand(name, origin, expanded, context) || expanded.empty()) break;
          if (expanded.find('/') == std::string::npos) {
            dependency_in(search, expanded, passed_on, depth);
            continue;
          }
          if (expanded.front() != '/') {
            problems_.push_back(context + " is the relative path " + expanded +
                                ", which the loader resolves against the working directory");
            break;
          }
          if (fs::exists(expanded, ec)) {
            dependency(expanded, context, passed_on, depth);
          } else {
            // Missing now: whoever may write where it would be could put it there.
            const fs::path dir = absolute_normal(expanded).parent_path();
            push_if(problems_, prefixed(context, directory_problem(dir, "directory", "the library", owner_uid_)));
          }
        }
        continue;
      }
      dependency_in(search, name, passed_on, depth);
    }
  }

  std::vector<std::string> take() { return std::move(problems_); }

 private:
  // Expands $ORIGIN and ${ORIGIN}; false (with the problem recorded) on a token the loader
  // would expand to something this host does not know ($LIB, $PLATFORM).
  bool expand(const std::string& entry, const fs::path& origin, std::string& out, const std::string& context) {
    out.clear();
    for (size_t i = 0; i < entry.size();) {
      if (entry[i] != '$') {
        out += entry[i++];
        continue;
      }
      size_t name_start = i + 1, name_end = name_start, after = name_start;
      if (name_start < entry.size() && entry[name_start] == '{') {
        name_end = entry.find('}', name_start + 1);
        if (name_end == std::string::npos) {
          out += entry.substr(i);
          break;
        }
        ++name_start;
        after = name_end + 1;
      } else {
        while (name_end < entry.size() && (std::isalnum(static_cast<unsigned char>(entry[name_end])) || entry[name_end] == '_'))
          ++name_end;
        after = name_end;
      }
      const std::string token = entry.substr(name_start, name_end - name_start);
      if (token == "ORIGIN") {
        out += origin.string();
      } else if (token == "LIB" || token == "PLATFORM") {
        problems_.push_back(context + " uses $" + token +
                            ", which moeq does not expand, so the directory it names cannot be checked");
        return false;
      } else {
        out += entry.substr(i, after - i);  // not a loader token: the loader keeps it as written
      }
      i = after;
    }
    return true;
  }

  // The directories an RPATH or RUNPATH list names, each checked once.
  std::vector<fs::path> directories(const std::vector<std::string>& entries, const char* tag, const fs::path& file,
                                    const std::vector<fs::path>& origins) {
    std::vector<fs::path> out;
    for (const std::string& entry : entries) {
      const std::string context = std::string(tag) + " entry '" + entry + "' of " + file.string();
      for (const fs::path& origin : origins) {
        std::string expanded;
        if (!expand(entry, origin, expanded, context)) break;
        if (expanded.empty() || expanded.front() != '/') {
          problems_.push_back(context + (expanded.empty() ? " is empty" : " is relative") +
                              ", which the loader resolves against the working directory");
          break;
        }
        const fs::path dir = absolute_normal(expanded);
        if (std::find(out.begin(), out.end(), dir) == out.end()) out.push_back(dir);
        if (!checked_dirs_.insert(dir).second) continue;
        const std::string what = std::string(tag) + " directory";
        push_if(problems_, prefixed(context, directory_problem(dir, what, "the " + what, owner_uid_)));
      }
    }
    return out;
  }

  // `name` searched for in `dirs`, as the loader does; every copy found is judged.
  void dependency_in(const std::vector<fs::path>& dirs, const std::string& name, const std::vector<fs::path>& inherited,
                     int depth) {
    for (const fs::path& dir : dirs) {
      std::error_code ec;
      const fs::path candidate = dir / name;
      if (fs::exists(candidate, ec))
        dependency(candidate, "dependency " + name + " found in " + dir.string(), inherited, depth);
    }
  }

  // A library the loader would open: the rules of a plugin file, then its own dependencies.
  void dependency(const fs::path& lib, const std::string& context, const std::vector<fs::path>& inherited, int depth) {
    std::error_code ec;
    const fs::path real = fs::canonical(lib, ec);
    if (ec) {
      problems_.push_back(context + ": cannot resolve " + lib.string() + ": " + ec.message());
      return;
    }
    const fs::path named_dir = absolute_normal(lib).parent_path();
    push_if(problems_, prefixed(context, path_problem(real, "library", owner_uid_)));
    push_if(problems_, prefixed(context, path_problem(real.parent_path(), "directory", owner_uid_)));
    push_if(problems_, prefixed(context, ancestors_problem(real.parent_path(), "the library", owner_uid_)));
    if (named_dir != real.parent_path()) {
      push_if(problems_, prefixed(context, path_problem(named_dir, "directory", owner_uid_)));
      push_if(problems_, prefixed(context, ancestors_problem(named_dir, "the library", owner_uid_)));
    }
    object(lib, inherited, depth + 1);
  }

  static std::string prefixed(const std::string& context, std::string problem) {
    return problem.empty() ? problem : context + ": " + problem;
  }

  uint32_t owner_uid_;
  std::vector<std::string> problems_;
  std::set<fs::path> visited_;
  std::set<fs::path> checked_dirs_;
};

}  // namespace

std::string path_problem(const fs::path& path, std::string_view what, uint32_t owner_uid) {
  return stat_problem(path, std::string(what) + " " + path.string(), owner_uid, Rule::exclusive);
}

std::string ancestors_problem(const fs::path& path, std::string_view role, uint32_t owner_uid) {
  for (fs::path p = absolute_normal(path).parent_path(); !p.empty(); p = p.parent_path()) {
    const std::string label = "directory " + p.string() + " above " + std::string(role);
    if (std::string why = stat_problem(p, label, owner_uid, Rule::sticky_ok); !why.empty()) return why;
    if (p == p.root_path()) break;
  }
  return {};
}

std::string directory_problem(const fs::path& dir, std::string_view what, std::string_view role, uint32_t owner_uid) {
  const fs::path named = absolute_normal(dir);
  std::error_code ec;
  fs::path existing = named;
  while (!fs::exists(existing, ec) && existing != existing.root_path()) existing = existing.parent_path();
  if (existing != named) {
    // Whoever may write `existing` can create the missing directory and fill it.
    const std::string label = "directory " + existing.string() + ", where the missing " + std::string(what) + " " +
                              named.string() + " could be created,";
    if (std::string why = stat_problem(existing, label, owner_uid, Rule::exclusive); !why.empty()) return why;
  } else if (std::string why = path_problem(named, what, owner_uid); !why.empty()) {
    return why;
  }
  if (std::string why = ancestors_problem(existing, role, owner_uid); !why.empty()) return why;
  const fs::path real = fs::canonical(existing, ec);
  if (!ec && real != existing) {
    if (std::string why = path_problem(real, what, owner_uid); !why.empty()) return why;
    if (std::string why = ancestors_problem(real, role, owner_uid); !why.empty()) return why;
  }
  return {};
}

ElfDynamic read_elf_dynamic(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string() + ": cannot open for reading: " + std::strerror(errno));
  std::error_code ec;
  const uint64_t size = fs::file_size(file, ec);
  if (ec) fail(file.string() + ": cannot size: " + ec.message());
  unsigned char ident[EI_NIDENT] = {};
  if (!read_at(in, 0, ident, sizeof ident)) fail(file.string() + ": file too short for an ELF header");
  if (std::memcmp(ident, ELFMAG, SELFMAG) != 0) fail(file.string() + ": no ELF header");
  const unsigned char native = std::endian::native == std::endian::little ? ELFDATA2LSB : ELFDATA2MSB;
  if (ident[EI_DATA] != native)
    fail(file.string() + ": byte order " + std::to_string(ident[EI_DATA]) + " (EI_DATA), this machine's is " +
         std::to_string(native));
  if (ident[EI_CLASS] == ELFCLASS64) return read_dynamic<Elf64_Ehdr, Elf64_Phdr, Elf64_Dyn>(in, file, size);
  if (ident[EI_CLASS] == ELFCLASS32) return read_dynamic<Elf32_Ehdr, Elf32_Phdr, Elf32_Dyn>(in, file, size);
  fail(file.string() + ": ELF class " + std::to_string(ident[EI_CLASS]) + " (EI_CLASS) is neither 32 nor 64 bit");
}

std::vector<std::string> dependency_problems(const fs::path& file, uint32_t owner_uid) {
  DependencyWalk walk(owner_uid);
  walk.object(file, {}, 0);
  return walk.take();
}

}  // namespace moeq::trust
