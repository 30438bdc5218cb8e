// `moeq conform`: the runner. It never runs plugin code itself: every check runs in a forked
// child that reports over a pipe (what it is doing, facts about the plugin, its verdict), so a
// plugin that crashes, aborts or hangs fails the check it was in and the runner goes on. Each
// child leads its own process group, which is killed when the check ends: whatever the plugin
// forked dies with it, and a check whose plugin left processes running fails.
#include "cmd_conform.hpp"

#include "cmd_conform_checks.hpp"
#include "cmd_conform_guard.hpp"
#include "cmd_conform_harness.hpp"

#include <moeq/error.hpp>
#include <moeq/host.hpp>

#include <boost/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>

namespace moeq::cli {
namespace fs = std::filesystem;
namespace json = boost::json;
using conform::CheckDef;
using conform::Outcome;
using conform::Verdict;

namespace {

struct CheckResult {
  const CheckDef* check = nullptr;
  Outcome outcome;
  double seconds = 0;
};

// What the children told about the plugin beside their verdicts; the first report of each wins.
struct Facts {
  std::map<std::string, std::string> plugin;  // name, version, abi
  std::optional<size_t> taken;                // fixtures its probe takes; unset when never probed
};

// One line of the child's report: no tabs or newlines inside a field.
std::string field(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  return s;
}

void write_all(int fd, const std::string& line) {
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

int g_report_fd = -1;  // in a child: its end of the pipe

// In a child, before every fork(): the plugin slot that forks, for the report.
void note_fork() {
  const std::string line = std::string("fork\t") + conform::plugin_slot_name(conform::current_slot()) + "\n";
  write_all(g_report_fd, line);
}

// The process group of the check running now (0 between checks), killed by the signal handler
// below when the runner itself is interrupted: the group is not the terminal's foreground one.
std::atomic<pid_t> g_running_group{0};

void on_interrupt(int sig) {
  if (const pid_t group = g_running_group.load(); group > 0) ::kill(-group, SIGKILL);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// The child: runs one check and reports. Never returns.
[[noreturn]] void child(const CheckDef& check, conform::Context ctx, int fd, bool verbose) {
  ::setpgid(0, 0);  // as the runner does too: whichever runs first
  // A crash is reported by the signal that ended the child: sanitizer runtimes that catch
  // these signals to print a report would turn it into an exit status.
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(sig, SIG_DFL);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, SIG_DFL);
  conform::install_guard_fault_handler(fd);
  g_report_fd = fd;
  ::pthread_atfork(&note_fork, nullptr, nullptr);
  if (!verbose) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::close(null);
    }
  }
  host::set_log_sink([verbose](moeq_log_level level, const std::string& source, const std::string& message) {
    if (verbose && level >= MOEQ_LOG_LEVEL_WARNING) std::cerr << "[" << source << "] " << message << "\n";
  });
  ctx.stage = [fd](const std::string& s) { write_all(fd, "stage\t" + field(s) + "\n"); };
  ctx.info = [fd](const std::string& k, const std::string& v) { write_all(fd, "info\t" + field(k) + "\t" + field(v) + "\n"); };
  ctx.taken = [fd](size_t n) { write_all(fd, "taken\t" + std::to_string(n) + "\n"); };
  Outcome o;
  try {
    o = check.run(ctx);
  } catch (const std::exception& e) {
    o = {Verdict::kFail, std::string("the check stopped: ") + e.what(), {}};
  }
  std::string out;
  for (const std::string& d : o.details) out += "detail\t" + field(d) + "\n";
  out += std::string("result\t") + conform::verdict_name(o.verdict) + "\t" + field(o.reason) + "\n";
  write_all(fd, out);
  ::close(fd);
  std::cout.flush();
  ::_exit(0);
}

std::string signal_text(int sig) {
  const char* name = sigabbrev_np(sig);
  const char* what = strsignal(sig);
  return std::string(name ? std::string("SIG") + name : "signal " + std::to_string(sig)) + (what ? " (" + std::string(what) + ")" : "");
}

// Processes of process group `group` that still run (zombies left out), "pid (name)" each.
std::vector<std::string> group_members(pid_t group) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string pid = it->path().filename().string();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(it->path() / "stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so from the last ')'.
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) continue;
    const std::vector<std::string> f = split(stat.substr(close + 2), ' ');
    if (f.size() < 3 || f[0] == "Z" || f[2] != std::to_string(group)) continue;
    out.push_back(pid + " (" + stat.substr(open + 1, close - open - 1) + ")");
  }
  return out;
}

CheckResult run_check(const CheckDef& check, const conform::Context& ctx, int timeout_s, bool verbose, Facts& facts) {
  CheckResult r;
  r.check = &check;
  const auto t0 = std::chrono::steady_clock::now();
  int fds[2];
  if (::pipe(fds) != 0) fail(MOEQ_STATUS_CODE_INTERNAL, std::string("pipe: ") + std::strerror(errno));
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = ::fork();
  if (pid < 0) fail(MOEQ_STATUS_CODE_INTERNAL, std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::close(fds[0]);
    child(check, ctx, fds[1], verbose);
  }
  ::setpgid(pid, pid);
  g_running_group.store(pid);
  ::close(fds[1]);
  std::string text;
  bool timed_out = false, exited = false;
  int status = 0;
  const auto deadline = t0 + std::chrono::seconds(timeout_s);
  auto drain = [&] {
    ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) | O_NONBLOCK);
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  };
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 50)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready > 0) {
      char buf[4096];
      const ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EOF: nothing holds the pipe open any more (done, or died)
      text.append(buf, static_cast<size_t>(n));
      continue;
    }
    // NOTE: not EOF alone: a process the plugin forked keeps the pipe open after the child is gone.
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      drain();
      break;
    }
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  while (!exited && ::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  // Whatever is left in the group was forked by the plugin (or by what it forked).
  const std::vector<std::string> strays = group_members(pid);
  ::kill(-pid, SIGKILL);
  g_running_group.store(0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::string stage, guard;
  std::set<std::string> forked_in;
  bool have_result = false;
  for (const std::string& line : split(text, '\n')) {
    const std::vector<std::string> f = split(line, '\t');
    if (f[0] == "stage" && f.size() >= 2) stage = f[1];
    if (f[0] == "guard" && f.size() >= 2 && guard.empty()) guard = f[1];
    if (f[0] == "fork" && f.size() >= 2) forked_in.insert(f[1]);
    if (f[0] == "info" && f.size() >= 3 && !facts.plugin.count(f[1])) facts.plugin[f[1]] = f[2];
    if (f[0] == "taken" && f.size() >= 2 && !facts.taken) {
      size_t n = 0;
      const auto [end, ec] = std::from_chars(f[1].data(), f[1].data() + f[1].size(), n);
      if (ec == std::errc() && end == f[1].data() + f[1].size()) facts.taken = n;
    }
    if (f[0] == "detail" && f.size() >= 2) r.outcome.details.push_back(f[1]);
    if (f[0] == "result" && f.size() >= 3) {
      have_result = true;
      r.outcome.verdict = f[1] == "pass" ? Verdict::kPass : f[1] == "n/a" ? Verdict::kNotApplicable : Verdict::kFail;
      r.outcome.reason = f[2];
    }
  }
  if (!have_result) {
    r.outcome.verdict = Verdict::kFail;
    const std::string where = stage.empty() ? "" : " while " + stage;
    if (timed_out)
      r.outcome.reason = "timed out after " + std::to_string(timeout_s) + " s" + where + " (killed)";
    else if (WIFSIGNALED(status))
      r.outcome.reason = (guard.empty() ? "" : guard + "; ") + "crashed: " + signal_text(WTERMSIG(status)) + where;
    else
      r.outcome.reason = "the check process exited with status " + std::to_string(WEXITSTATUS(status)) + where +
                         " without a verdict";
  }
  if (!strays.empty()) {
    std::string who, slots;
    for (const std::string& s : strays) who += (who.empty() ? "" : ", ") + s;
    for (const std::string& s : forked_in) slots += (slots.empty() ? "" : ", ") + s;
    std::string reason = "the plugin left " + std::to_string(strays.size()) +
                         (strays.size() == 1 ? " process" : " processes") + " running after the check (" + who + ")" +
                         (slots.empty() ? "" : "; it forked in " + slots) + "; their process group was killed";
    if (r.outcome.verdict == Verdict::kFail) r.outcome.details.insert(r.outcome.details.begin(), "and: " + r.outcome.reason);
    r.outcome.verdict = Verdict::kFail;
    r.outcome.reason = std::move(reason);
  }
  return r;
}

// A temporary directory for generated fixtures, removed unless kept.
class FixtureRoot {
 public:
  explicit FixtureRoot(const std::string& keep) {
    if (!keep.empty()) {
      path_ = keep;
      kept_ = true;
      if (fs::exists(path_) && !fs::is_empty(path_)) fail("--keep-fixtures: " + keep + " exists and is not empty");
    } else {
      std::random_device rd;
      path_ = fs::temp_directory_path() / ("moeq_conform_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    }
    fs::create_directories(path_);
  }
  ~FixtureRoot() {
    std::error_code ec;
    if (!kept_) fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  bool kept_ = false;
};

}  // namespace

ConformCommand::ConformCommand(CLI::App& app, CommonOptions& common) : common_(common) {
  sub_ = app.add_subcommand("conform", "run the conformance suite on a plugin .so, each check in its own process");
  sub_->add_option("plugin", plugin_, "the plugin shared object")->required();
  CLI::Option* checkpoint =
      sub_->add_option("--checkpoint", checkpoint_, "test on this checkpoint instead of the generated fixtures");
  sub_->add_option("--reference", reference_,
                   "with --checkpoint: a checkpoint directory of the same model's expert weights as floats (F32, BF16, "
                   "F16), made without the plugin, that check 7 also holds apply to")
      ->needs(checkpoint)
      ->check(CLI::ExistingDirectory);
  sub_->add_option("--online", online_,
                   "probe and load with the online quantization config of this scheme (int8, fp8-tensor, fp8-channel, "
                   "fp8-block), on generated unquantized BF16 fixtures unless --checkpoint is given");
  sub_->add_option("--check", only_, "run only this check (repeatable)")
      ->check(CLI::Range(1, static_cast<int>(conform::all_checks().size())));
  sub_->add_option("--timeout", timeout_s_, "seconds each check may take before it is killed and fails")
      ->check(CLI::PositiveNumber);
  sub_->add_flag("--verbose", verbose_, "print every detail line and let the checks' stderr through");
  // NOTE: with --checkpoint nothing is generated, so there would be nothing to keep: a usage
  // error (exit 2) rather than an empty promise.
  sub_->add_option("--keep-fixtures", keep_fixtures_, "write the generated fixtures here and keep them")
      ->excludes(checkpoint);
  sub_->add_option("--plugin-dir", common_.plugin_dir, "where plugins it delegates to are found")
      ->check(CLI::ExistingDirectory);
  sub_->add_flag("--json", common_.json, "print the report as JSON");
}

int ConformCommand::run() const {
  // NOTE: checked here rather than by a CLI11 validator, so that a wrong name is a usage error
  // (exit 2) with the valid names spelled out, before any fixture is written.
  if (!online_.empty()) {
    const std::vector<std::string>& names = online_schemes();
    if (std::find(names.begin(), names.end(), online_) == names.end()) {
      std::string valid;
      for (const std::string& n : names) valid += (valid.empty() ? "" : ", ") + n;
      std::cerr << "moeq conform: unknown --online scheme '" << online_ << "'; valid schemes: " << valid << "\n";
      return 2;
    }
  }
  const fs::path file = fs::absolute(plugin_);
  if (!fs::is_regular_file(file)) fail("conform: " + plugin_ + " is not a file");
  conform::Context ctx;
  ctx.plugin_file = file;
  std::optional<fs::path> dir;
  if (!common_.plugin_dir.empty()) dir = common_.plugin_dir;
  ctx.dependency_dirs = Registry::search_path(dir);

  std::optional<FixtureRoot> root;
  if (!checkpoint_.empty()) {
    const Checkpoint ck = Checkpoint::open(checkpoint_);
    if (conform::layer_queries(ck).empty()) fail("conform: " + checkpoint_ + " has no MoE expert weights in any naming family");
    ctx.fixtures.push_back(conform::checkpoint_fixture(fs::absolute(checkpoint_), online_));
    ctx.user_checkpoint = true;
    if (!reference_.empty())
      ctx.reference = std::make_shared<const conform::Reference>(conform::read_reference(fs::absolute(reference_)));
  } else {
    root.emplace(keep_fixtures_);
    ctx.fixtures = conform::generate_fixtures(root->path(), online_);
  }

  std::vector<CheckResult> results;
  Facts facts;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, &on_interrupt);
  for (const CheckDef& c : conform::all_checks()) {
    if (!only_.empty() && std::find(only_.begin(), only_.end(), c.id) == only_.end()) continue;
    results.push_back(run_check(c, ctx, timeout_s_, verbose_, facts));
  }
  // NOTE: the checkpoint named is what the user asked about: a load or apply check (4-8) that
  // could not run on it is a failure, not a pass by omission.
  if (ctx.user_checkpoint)
    for (CheckResult& r : results)
      if (r.check->id >= 4 && r.check->id <= 8 && r.outcome.verdict == Verdict::kNotApplicable) {
        r.outcome.verdict = Verdict::kFail;
        r.outcome.reason = "did not run on the --checkpoint: " + r.outcome.reason;
      }
  int counts[3] = {0, 0, 0};
  for (const CheckResult& r : results) ++counts[static_cast<int>(r.outcome.verdict)];
  // NOTE: a plugin that takes none of the fixtures passes only the checks that need none; the
  // summary says so rather than a bare "conforms". With --checkpoint that is a failure even
  // when --check left out every check that would have failed.
  const bool took_none = facts.taken == size_t{0};
  const bool ok = counts[static_cast<int>(Verdict::kFail)] == 0 && !(ctx.user_checkpoint && took_none);
  const char* verdict = !ok ? "does NOT conform" : took_none ? "conforms on the checks that ran" : "conforms";
  const std::string why_partial = std::string("the load and apply checks did not run: ") +
                                  (ctx.user_checkpoint ? "the plugin declined the checkpoint"
                                                       : "the plugin took none of the generated fixtures");

  if (common_.json) {
    json::object o;
    o["plugin_file"] = file.string();
    json::object plugin;
    for (const auto& [k, v] : facts.plugin) plugin[k] = v;
    o["plugin"] = plugin;
    json::array fixtures;
    for (const conform::Fixture& f : ctx.fixtures) fixtures.push_back(json::string(f.name));
    o["fixtures"] = fixtures;
    if (!online_.empty()) o["online"] = online_;
    if (ctx.reference) o["reference"] = ctx.reference->what;
    json::array checks;
    for (const CheckResult& r : results) {
      json::array details;
      for (const std::string& d : r.outcome.details) details.push_back(json::string(d));
      checks.push_back(json::object{{"id", r.check->id},
                                    {"name", r.check->name},
                                    {"verdict", conform::verdict_name(r.outcome.verdict)},
                                    {"reason", r.outcome.reason},
                                    {"details", details},
                                    {"seconds", r.seconds}});
    }
    o["checks"] = checks;
    json::object summary{{"pass", counts[0]}, {"fail", counts[1]}, {"not_applicable", counts[2]}, {"verdict", verdict}};
    // How many fixtures the plugin's probe takes; null when the host refused it before any probe.
    summary["fixtures_taken"] = facts.taken ? json::value(*facts.taken) : json::value(nullptr);
    if (took_none && (ok || ctx.user_checkpoint)) summary["note"] = why_partial;
    o["summary"] = summary;
    o["ok"] = ok;
    std::cout << json::serialize(o) << "\n";
    return ok ? 0 : 1;
  }

  std::cout << "moeq conform: " << file.string() << "\n";
  if (facts.plugin.count("name"))
    std::cout << "plugin: " << facts.plugin["name"] << " " << facts.plugin["version"] << ", ABI " << facts.plugin["abi"]
              << "\n";
  std::cout << "fixtures: ";
  for (size_t i = 0; i < ctx.fixtures.size(); ++i) std::cout << (i ? ", " : "") << ctx.fixtures[i].name;
  std::cout << (ctx.user_checkpoint ? " (--checkpoint)" : " (generated by the writer)");
  if (!online_.empty()) std::cout << ", loaded with --online " << online_;
  if (ctx.reference) std::cout << ", held to " << ctx.reference->what;
  std::cout << "\n\n";
  std::printf("%3s  %-16s %-7s %s\n", "#", "check", "verdict", "reason");
  std::fflush(stdout);
  for (const CheckResult& r : results) {
    std::printf("%3d  %-16s %-7s %s\n", r.check->id, r.check->name, conform::verdict_name(r.outcome.verdict),
                r.outcome.reason.c_str());
    if (verbose_)
      for (const std::string& d : r.outcome.details) std::printf("%3s  %-16s %-7s   %s\n", "", "", "", d.c_str());
  }
  std::printf("\n%d pass, %d fail, %d not applicable: %s%s\n", counts[0], counts[1], counts[2], verdict,
              took_none && (ok || ctx.user_checkpoint) ? ("; " + why_partial).c_str() : "");
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace moeq::cli
