// `moeq conform PLUGIN.so [--checkpoint DIR [--reference DIR]] [--online SCHEME] [--json]`: the conformance suite
// of one plugin, each check in its own child process (cmd_conform_checks.cpp lists them).
#pragma once
#include "session.hpp"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace moeq::cli {

class ConformCommand {
 public:
  // Adds the `conform` subcommand to `app`; `common` carries --json and --plugin-dir.
  ConformCommand(CLI::App& app, CommonOptions& common);
  bool parsed() const { return sub_->parsed(); }
  // Runs the checks and prints the table (or JSON). 0 when no check fails, 1 otherwise (a
  // plugin that declines the --checkpoint or --online scheme named fails, and with --checkpoint
  // a load or apply check that could not run fails); 2 for an unknown --online scheme.
  // --keep-fixtures with --checkpoint, and --reference without it, are refused by the parser (exit 2).
  int run() const;

 private:
  CLI::App* sub_;
  CommonOptions& common_;
  std::string plugin_;
  std::string checkpoint_;
  std::string reference_;
  std::string online_;
  std::vector<int> only_;
  int timeout_s_ = 120;
  bool verbose_ = false;
  std::string keep_fixtures_;
};

}  // namespace moeq::cli
