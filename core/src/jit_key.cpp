// The JIT cache key (see jit_key.hpp for what it covers and why).
#include <moeq/jit_key.hpp>

#include <algorithm>

namespace moeq::jit {

Digest cache_key(const KeyInputs& in) {
  const Request& r = in.request;
  Digester h;
  h.field("moeq.jit.key").field(std::to_string(kKeySchema));
  h.field(in.compiler);
  h.field(std::to_string(MOEQ_ABI_MAJOR) + "." + std::to_string(MOEQ_ABI_MINOR));
  h.field(r.kind == SourceKind::ptx ? "ptx" : "cuda");
  h.field(r.plugin_name).field(r.plugin_version).field(r.name).field(r.arch);
  h.field(std::to_string(in.options.size()));
  for (const auto& o : in.options) h.field(o);
  h.field(r.source);

  std::vector<const Header*> headers;
  for (const Header& hd : r.headers) headers.push_back(&hd);
  std::sort(headers.begin(), headers.end(), [](const Header* a, const Header* b) { return a->name < b->name; });
  h.field(std::to_string(headers.size()));
  for (const Header* hd : headers) h.field(hd->name).field(hd->contents);

  h.field(std::to_string(in.includes.files.size()));
  for (const IncludedFile& f : in.includes.files) {
    h.field(f.path);
    h.update(std::span<const uint8_t>(f.digest.data(), f.digest.size()));
  }
  h.field(std::to_string(in.includes.unresolved.size()));
  for (const auto& u : in.includes.unresolved) h.field(u);
  return h.finish();
}

}  // namespace moeq::jit
