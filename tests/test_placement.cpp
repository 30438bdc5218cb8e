// TP/EP placement rules.
#include <moeq/error.hpp>
#include <moeq/placement.hpp>

#include <doctest/doctest.h>

using namespace moeq;

TEST_CASE("linear EP placement gives the remainder to the first ranks") {
  // 10 experts over 4 ranks: 3, 3, 2, 2 starting at 0, 3, 6, 8.
  const int64_t first[] = {0, 3, 6, 8}, count[] = {3, 3, 2, 2};
  int64_t covered = 0;
  for (int r = 0; r < 4; ++r) {
    ExpertRange e = local_experts(10, r, 4);
    CHECK(e.first == first[r]);
    CHECK(e.count == count[r]);
    covered += e.count;
  }
  CHECK(covered == 10);
  CHECK(local_experts(8, 1, 2).contains(4));
  CHECK_FALSE(local_experts(8, 1, 2).contains(3));
}

TEST_CASE("placement validation names the problem") {
  CHECK_THROWS_WITH_AS(validate_placement({0, 3, 0, 1}, 8, 128), doctest::Contains("not divisible by tp size 3"),
                       Error);
  CHECK_THROWS_WITH_AS(validate_placement({2, 2, 0, 1}, 8, 128), doctest::Contains("tp rank 2 of size 2"), Error);
  CHECK_THROWS_WITH_AS(validate_placement({0, 1, 0, 16}, 8, 128), doctest::Contains("exceeds the 8 experts"), Error);
  CHECK_NOTHROW(validate_placement({1, 2, 1, 2}, 8, 128));
}
