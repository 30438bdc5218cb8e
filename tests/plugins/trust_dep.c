/* A library the trust_dep_user plugins need; the loader finds it only through their RUNPATH
 * (or RPATH). Its constructor creates the file MOEQ_TEST_TRUST_DEP_MARK names, so a test can
 * tell whether this library's code ran. */
#include <stdio.h>
#include <stdlib.h>

__attribute__((visibility("default"))) int moeq_trust_dep_answer(void) { return 42; }

__attribute__((constructor)) static void moeq_trust_dep_mark(void) {
  const char* path = getenv("MOEQ_TEST_TRUST_DEP_MARK");
  if (path == NULL || *path == '\0') return;
  FILE* f = fopen(path, "w");
  if (f != NULL) fclose(f);
}
