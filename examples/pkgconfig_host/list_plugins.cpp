// A host built without CMake, against an installed moeq through pkg-config:
//
//   c++ -std=c++20 list_plugins.cpp $(pkg-config --cflags --libs moeq) -o list_plugins
//   ./list_plugins "$(pkg-config --variable=plugindir moeq)"
//
// Loads every plugin of the directory through libmoeq's registry and prints each one with its
// schemes, and every refused file with the registry's reason.
#include <moeq/host.hpp>
#include <moeq/registry.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PLUGIN_DIR\n", argv[0]);
    return 2;
  }
  moeq::Registry registry(moeq::host::api());
  moeq::host::set_registry(&registry);
  registry.load_directory(argv[1]);
  for (const auto& p : registry.plugins()) {
    std::printf("%s %s\n", p->name.c_str(), p->version.c_str());
    for (size_t i = 0; i < p->descriptor->num_schemes; ++i) std::printf("    %s\n", p->descriptor->schemes[i]);
  }
  for (const moeq::PluginRefusal& r : registry.refusals())
    std::printf("refused %s: %s\n", r.file.c_str(), r.reason.c_str());
  moeq::host::set_registry(nullptr);
  return registry.plugins().empty() ? 1 : 0;
}
