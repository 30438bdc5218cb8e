// Boost.JSON compiled once, into a static library of its own (no Boost shared library at
// run time, which the GPU machines do not have).
#include <boost/json/src.hpp>
