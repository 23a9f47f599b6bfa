/* tests/layering/include.c: one #include, compiled with the include path of one part of
 * the build (tests/CMakeLists.txt, "layering"): a header the part may not use must not
 * be found ("No such file", matched by CTest). For an allowed header the check is here:
 * the header found must be the project's (it defines LS_LAYER_GUARD, its include guard),
 * or the compile fails. LS_LAYER_HEADER is the header, as a string. */
#include LS_LAYER_HEADER

#ifdef LS_LAYER_GUARD
/* the guard macros are defined empty: "(LS_X_H 1)" is "( 1)" when the guard is defined, and
 * "(0 1)", a preprocessor error, when it is not */
#if !(LS_LAYER_GUARD 1)
#error "unreachable"
#endif
#endif

int ls_layering_probe(void);
int ls_layering_probe(void) { return 0; }
