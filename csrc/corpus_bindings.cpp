#include "bindings.h"
namespace nextlong {
void bind_corpus(pybind11::module_& m) {}
}  // namespace nextlong
