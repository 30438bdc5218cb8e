// Who may have written the code the host runs (docs/DESIGN.md §4, §5): plugin files, the
// libraries a plugin pulls in through RPATH/RUNPATH/$ORIGIN, and JIT cache entries. A file or
// a directory code is taken from must be owned by root or the user running moeq and writable
// by no one else; every directory above it must be owned by root or that user and writable by
// no one else unless its sticky bit is set (/tmp). Each check answers empty when trusted, else
// one line naming the path and what was found against what was expected.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::trust {

// `path` itself (stat follows symlinks): owner root or `owner_uid`, no write for group or
// others. The line starts "<what> <path> ...", e.g. "file /p/x.so is writable by its group".
std::string path_problem(const std::filesystem::path& path, std::string_view what, uint32_t owner_uid);

// Every directory above `path`, from its parent up to "/": owner root or `owner_uid`, no write
// for group or others unless sticky. `role` ends the name: "directory /opt above <role> ...".
std::string ancestors_problem(const std::filesystem::path& path, std::string_view role, uint32_t owner_uid);

// A directory code is loaded from, `path_problem` on itself and `ancestors_problem` above it,
// both as named and where it really lives. A directory that does not exist is judged by the
// nearest one above it that does, held to the rule of the directory itself (the sticky bit
// does not stop others from creating a new entry there).
std::string directory_problem(const std::filesystem::path& dir, std::string_view what, std::string_view role,
                              uint32_t owner_uid);

// What decides where the dynamic loader looks for an ELF object's dependencies: its DT_NEEDED
// names and its DT_RPATH and DT_RUNPATH lists (split at ':', tokens not yet expanded).
struct ElfDynamic {
  std::vector<std::string> needed;
  std::vector<std::string> rpath;
  std::vector<std::string> runpath;
  bool has_rpath = false;
  bool has_runpath = false;
};

// Reads the dynamic segment (PT_DYNAMIC) of an ELF32 or ELF64 file of this machine's byte
// order, as the loader does, without loading it. Throws moeq::Error naming the file and what
// does not check out.
ElfDynamic read_elf_dynamic(const std::filesystem::path& file);

// Everything the loader would take code from while loading `file`, beyond `file` itself:
// every RPATH/RUNPATH directory (with $ORIGIN expanded) held to `directory_problem`, every
// dependency found in one of them or named by a path held to the rules of a plugin file, and
// those dependencies' own RPATH/RUNPATH, recursively. An entry that cannot be checked
// ($LIB, $PLATFORM, a relative directory, resolved against the working directory) is a problem
// too. Dependencies the loader finds in the system directories are not judged here. One line
// per problem, empty when every one passes.
std::vector<std::string> dependency_problems(const std::filesystem::path& file, uint32_t owner_uid);

}  // namespace moeq::trust
