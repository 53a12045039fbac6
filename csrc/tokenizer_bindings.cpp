#include "bindings.h"
namespace nextlong {
void bind_tokenizer(pybind11::module_& m) {}
}  // namespace nextlong
