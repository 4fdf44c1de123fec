// The program of the header self-containment check: the generated units next to it each
// include one public header on its own (twice, for the include guard); building them is
// the test. Running it checks that the pieces also link into one program.
#include <pyscheduler/pyscheduler.hpp>

int main() { return pyscheduler::ext::version()[0] == '\0' ? 1 : 0; }
