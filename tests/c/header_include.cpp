/* header_include.c compiled as C++ (see there). */
#include "header_include.c"
