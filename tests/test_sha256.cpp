// SHA-256 against the FIPS 180-4 example digests (the manifest of trusted plugins relies on
// it matching `sha256sum`).
#include <moeq/sha256.hpp>

#include <doctest/doctest.h>

#include <string>

using namespace moeq;

TEST_CASE("sha256 matches the FIPS 180-4 example digests") {
  CHECK(to_hex(sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(to_hex(sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(to_hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 h;  // one million 'a', fed in uneven pieces
  const std::string chunk(997, 'a');
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, chunk.size());
    h.update(std::string_view(chunk).substr(0, n));
    left -= n;
  }
  CHECK(to_hex(h.finish()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256 field() keeps boundaries between fields") {
  CHECK(Sha256().field("ab").field("c").finish() != Sha256().field("a").field("bc").finish());
}
