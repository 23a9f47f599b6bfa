/* tests/layering/include.c: one #include, compiled with the include path of one part of
 * the build (tests/CMakeLists.txt, "layering"): a header the part may not use must not
 * be found. LS_LAYER_HEADER is the header, as a string. */
#include LS_LAYER_HEADER

int ls_layering_probe(void);
int ls_layering_probe(void) { return 0; }
