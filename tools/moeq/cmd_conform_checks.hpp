// `moeq conform`: the checks. Each runs in its own child process (cmd_conform.cpp) and answers
// pass, fail or not applicable with a one-line reason; a crash or a timeout is the runner's fail.
#pragma once
#include "cmd_conform_fixtures.hpp"
#include "cmd_conform_reference.hpp"

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeq::cli::conform {

enum class Verdict { kPass, kFail, kNotApplicable };
const char* verdict_name(Verdict v);  // "pass", "fail", "n/a"

struct Outcome {
  Verdict verdict = Verdict::kPass;
  std::string reason;                // one line
  std::vector<std::string> details;  // more lines for --verbose and --json
};

struct Context {
  std::filesystem::path plugin_file;
  std::vector<Fixture> fixtures;  // generated, or the one --checkpoint
  bool user_checkpoint = false;
  // --reference DIR, read by the runner before any check: float weights check 7 holds apply to.
  std::shared_ptr<const Reference> reference;
  std::vector<std::filesystem::path> dependency_dirs;  // where requires_plugins are found
  // Tells the runner what the child is doing now, so that a crash names it.
  std::function<void(const std::string&)> stage;
  // Facts about the plugin for the report header (name, version, abi), sent once.
  std::function<void(const std::string& key, const std::string& value)> info;
  // How many fixtures the plugin's probe takes, so that the summary can say when the load and
  // apply checks had nothing to run on.
  std::function<void(size_t fixtures)> taken;
};

struct CheckDef {
  int id;
  const char* name;  // short, for the table: "entry symbol", "abi negotiation", ...
  const char* what;  // one line: what it proves
  Outcome (*run)(Context&);
};

const std::vector<CheckDef>& all_checks();

}  // namespace moeq::cli::conform
