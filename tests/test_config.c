/* test_config.c: cmocka tests for src/config.c.
 *
 * ls_config_parse on inline config.json texts: the three supported families (by
 * architectures and by model_type alone), GQA and head_dim defaults, the classic
 * rope_theta + rope_scaling form and the transformers-5 rope_parameters form, bias and
 * sliding-window rules per family. Each bad config must return -1 with exactly one
 * stderr line naming the file. ls_config_rope_inv_freq is checked against an
 * independent double-precision evaluation of transformers' formulas
 * (modeling_rope_utils: default, linear, llama3); ls_family_gemm_flops_per_token
 * against hand-computed counts. The fixture configs are loaded too when
 * $LS_FIXTURES is set. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_capture.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "family.h"
#include "ls_common.h"

#define PATH "/models/tiny-llama/config.json"

/* msg must be exactly one '\n'-terminated line containing every needle. */
static void assert_one_line(const char *msg, size_t len, const char *const *needles, int n) {
  int ok = len > 0 && msg[len - 1] == '\n' && strchr(msg, '\n') == msg + len - 1;
  for (int i = 0; i < n; i++) ok = ok && strstr(msg, needles[i]) != NULL;
  if (!ok) {
    fprintf(stderr, "expected one line containing");
    for (int i = 0; i < n; i++) fprintf(stderr, " '%s'", needles[i]);
    fprintf(stderr, ", got %zu bytes: %s\n", len, msg);
  }
  assert_true(ok);
}

/* ---- parse helpers ---------------------------------------------------------------- */

static void parse_ok(const char *json, ls_config_t *cfg) {
  capture_t c;
  capture_begin(&c);
  int rc = ls_config_parse(json, PATH, cfg);
  size_t len;
  char *msg = capture_end(&c, &len);
  if (rc != 0 || len != 0) fprintf(stderr, "config rejected (rc %d): %s\nfor: %s\n", rc, msg, json);
  assert_int_equal(rc, 0);
  assert_int_equal(len, 0);
  free(msg);
}

/* Must fail with one line naming PATH and containing want (and want2 if given). */
static void expect_bad2(const char *json, const char *want, const char *want2) {
  ls_config_t cfg;
  capture_t c;
  capture_begin(&c);
  int rc = ls_config_parse(json, PATH, &cfg);
  size_t len;
  char *msg = capture_end(&c, &len);
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  [%s] %s", want, msg);
  if (rc != -1) fprintf(stderr, "config accepted (rc %d), wanted error '%s': %s\n", rc, want, json);
  assert_int_equal(rc, -1);
  const char *needles[4] = {"layersweep: error: ", PATH ": ", want, want2};
  assert_one_line(msg, len, needles, want2 ? 4 : 3);
  free(msg);
}

static void expect_bad(const char *json, const char *want) { expect_bad2(json, want, NULL); }

#define SIZES                                                                                \
  "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 3, "               \
  "\"num_attention_heads\": 4, \"vocab_size\": 256"
#define A_LLAMA "\"architectures\": [\"LlamaForCausalLM\"], "
#define A_MISTRAL "\"architectures\": [\"MistralForCausalLM\"], "
#define A_QWEN2 "\"architectures\": [\"Qwen2ForCausalLM\"], "
#define A_QWEN3 "\"architectures\": [\"Qwen3ForCausalLM\"], "
#define A_OLMO2 "\"architectures\": [\"Olmo2ForCausalLM\"], "
#define A_GEMMA "\"architectures\": [\"GemmaForCausalLM\"], "
#define A_GEMMA2 "\"architectures\": [\"Gemma2ForCausalLM\"], "

/* ---- families ------------------------------------------------------------------------ */

static void test_llama_full(void **state) {
  ls_config_t c;
  parse_ok("{" A_LLAMA "\"model_type\": \"llama\", " SIZES ", \"num_key_value_heads\": 2, "
           "\"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, "
           "\"hidden_act\": \"silu\", \"attention_bias\": false, \"mlp_bias\": false, "
           "\"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"pad_token_id\": null, "
           "\"sliding_window\": 16}",
           &c);
  assert_string_equal(c.arch_name, "LlamaForCausalLM");
  assert_string_equal(c.arch_name, "LlamaForCausalLM");
  assert_int_equal(c.hidden, 64);
  assert_int_equal(c.intermediate, 96);
  assert_int_equal(c.n_layers, 3);
  assert_int_equal(c.n_heads, 4);
  assert_int_equal(c.n_kv_heads, 2);
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.vocab, 256);
  assert_int_equal(c.max_pos, 128);
  assert_true(c.rms_eps == 1e-5);
  assert_true(c.rope.theta == 500000.0);
  assert_int_equal(c.rope.type, LS_ROPE_DEFAULT);
  assert_true(c.rope.factor == 1.0);
  assert_int_equal(c.sliding_window, 0); /* Llama never uses a window */
  assert_int_equal(c.qkv_bias, 0);
  assert_int_equal(c.o_bias, 0);
  assert_int_equal(c.mlp_bias, 0);
  assert_int_equal(c.tie_embeddings, 1);
}

static void test_defaults(void **state) {
  /* only the required keys: GQA default, head_dim default, eps / theta defaults */
  ls_config_t c;
  parse_ok("{" A_LLAMA SIZES "}", &c);
  assert_int_equal(c.n_kv_heads, 4);
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.max_pos, 0);
  assert_true(c.rms_eps == 1e-6);
  assert_true(c.rope.theta == 10000.0);
  assert_int_equal(c.rope.type, LS_ROPE_DEFAULT);
  assert_int_equal(c.tie_embeddings, 0);
  /* null counts as absent */
  parse_ok("{" A_LLAMA SIZES ", \"num_key_value_heads\": null, \"head_dim\": null, "
           "\"rope_scaling\": null}", &c);
  assert_int_equal(c.n_kv_heads, 4);
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.rope.type, LS_ROPE_DEFAULT);
}

static void test_mistral(void **state) {
  ls_config_t c;
  parse_ok("{" A_MISTRAL SIZES ", \"num_key_value_heads\": 1, \"sliding_window\": 4096}", &c);
  assert_string_equal(c.arch_name, "MistralForCausalLM");
  assert_string_equal(c.arch_name, "MistralForCausalLM");
  assert_int_equal(c.n_kv_heads, 1);
  assert_int_equal(c.sliding_window, 4096);
  assert_int_equal(c.qkv_bias, 0);
  assert_int_equal(c.o_bias, 0);
  assert_int_equal(c.mlp_bias, 0);
  parse_ok("{" A_MISTRAL SIZES ", \"sliding_window\": null}", &c);
  assert_int_equal(c.sliding_window, 0);
  parse_ok("{" A_MISTRAL SIZES "}", &c);
  assert_int_equal(c.sliding_window, 0);
  expect_bad("{" A_MISTRAL SIZES ", \"sliding_window\": -1}", "\"sliding_window\"");
  expect_bad("{" A_MISTRAL SIZES ", \"sliding_window\": 8.5}", "\"sliding_window\"");
}

static void test_qwen2(void **state) {
  ls_config_t c;
  parse_ok("{" A_QWEN2 SIZES ", \"num_key_value_heads\": 2, \"use_sliding_window\": false, "
           "\"sliding_window\": 4096, \"max_window_layers\": 28, \"rope_theta\": 1000000.0}",
           &c);
  assert_string_equal(c.arch_name, "Qwen2ForCausalLM");
  assert_string_equal(c.arch_name, "Qwen2ForCausalLM");
  assert_int_equal(c.sliding_window, 0); /* not in use */
  assert_int_equal(c.qkv_bias, 1);
  assert_int_equal(c.o_bias, 0);
  assert_int_equal(c.mlp_bias, 0);
  assert_true(c.rope.theta == 1e6);
  /* use_sliding_window absent: defaults to false */
  parse_ok("{" A_QWEN2 SIZES ", \"sliding_window\": 32768}", &c);
  assert_int_equal(c.sliding_window, 0);
  /* in use, every layer sliding */
  parse_ok("{" A_QWEN2 SIZES ", \"use_sliding_window\": true, \"sliding_window\": 16}", &c);
  assert_int_equal(c.sliding_window, 16);
  /* the transformers-5 fixture form: layer_types all full, sliding_window null */
  parse_ok("{" A_QWEN2 SIZES ", \"layer_types\": [\"full_attention\", \"full_attention\", "
           "\"full_attention\"], \"sliding_window\": null, \"use_sliding_window\": false, "
           "\"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": \"default\"}}", &c);
  assert_int_equal(c.sliding_window, 0);
  assert_true(c.rope.theta == 1e6);
  /* Qwen2 biases are fixed by the family, attention_bias is not read */
  parse_ok("{" A_QWEN2 SIZES ", \"attention_bias\": false}", &c);
  assert_int_equal(c.qkv_bias, 1);
  expect_bad("{" A_QWEN2 SIZES ", \"use_sliding_window\": \"no\"}", "\"use_sliding_window\"");
  expect_bad("{" A_QWEN2 SIZES ", \"layer_types\": [\"full_attention\", \"sliding_attention\"],"
             " \"sliding_window\": 8}", "mixing sliding and full");
  expect_bad("{" A_QWEN2 SIZES ", \"layer_types\": [\"chunked\"]}", "layer_types");
}

static void test_model_type_only(void **state) {
  static const struct { const char *type, *arch; int qkv_bias; } k[] = {
      {"llama", "LlamaForCausalLM", 0},
      {"mistral", "MistralForCausalLM", 0},
      {"qwen2", "Qwen2ForCausalLM", 1},
  };
  for (int i = 0; i < 3; i++) {
    char json[1024];
    snprintf(json, sizeof json, "{\"model_type\": \"%s\", " SIZES "}", k[i].type);
    ls_config_t c;
    parse_ok(json, &c);
    assert_string_equal(c.arch_name, k[i].arch);
    assert_string_equal(c.model_type, k[i].type);
    assert_ptr_equal(ls_family_get(c.family), ls_family_get(ls_family_find(k[i].arch, NULL)));
    assert_int_equal(c.qkv_bias, k[i].qkv_bias);
  }
  /* architectures and model_type must agree (transformers builds model_type's class) */
  ls_config_t c;
  expect_bad("{" A_MISTRAL "\"model_type\": \"llama\", " SIZES "}", "model_type is \"llama\"");
  parse_ok("{" A_MISTRAL "\"model_type\": \"mistral\", " SIZES "}", &c);
  assert_string_equal(c.arch_name, "MistralForCausalLM");
  /* an unknown model_type beside a known class is left to the class */
  parse_ok("{" A_MISTRAL "\"model_type\": \"my_mistral\", " SIZES "}", &c);
  assert_string_equal(c.arch_name, "MistralForCausalLM");
  /* a key given twice: Python keeps the last value, cJSON the first: refused */
  expect_bad("{" A_LLAMA SIZES ", \"rope_theta\": 10000, \"rope_theta\": 500000}",
             "\"rope_theta\" is given twice");
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2, "
             "\"factor\": 4}}", "\"factor\" is given twice");
}

static void test_head_dim(void **state) {
  ls_config_t c;
  parse_ok("{" A_LLAMA SIZES ", \"head_dim\": 32}", &c);
  assert_int_equal(c.head_dim, 32);
  /* explicit head_dim lifts the divisibility requirement */
  parse_ok("{" A_LLAMA "\"hidden_size\": 60, \"intermediate_size\": 96, \"num_hidden_layers\": 1, "
           "\"num_attention_heads\": 8, \"num_key_value_heads\": 2, \"vocab_size\": 10, "
           "\"head_dim\": 8}", &c);
  assert_int_equal(c.head_dim, 8);
  assert_int_equal(c.n_heads, 8);
  assert_int_equal(c.n_kv_heads, 2);
}

static void test_biases(void **state) {
  ls_config_t c;
  parse_ok("{" A_LLAMA SIZES ", \"attention_bias\": true}", &c);
  assert_int_equal(c.qkv_bias, 1);
  assert_int_equal(c.o_bias, 1);
  assert_int_equal(c.mlp_bias, 0);
  parse_ok("{" A_LLAMA SIZES ", \"mlp_bias\": true}", &c);
  assert_int_equal(c.qkv_bias, 0);
  assert_int_equal(c.o_bias, 0);
  assert_int_equal(c.mlp_bias, 1);
  parse_ok("{" A_LLAMA SIZES ", \"attention_bias\": true, \"mlp_bias\": true}", &c);
  assert_int_equal(c.qkv_bias + c.o_bias + c.mlp_bias, 3);
  expect_bad("{" A_LLAMA SIZES ", \"attention_bias\": 1}", "\"attention_bias\"");
  expect_bad("{" A_LLAMA SIZES ", \"mlp_bias\": \"yes\"}", "\"mlp_bias\"");
}

/* ---- rope forms --------------------------------------------------------------------- */

static void test_rope_classic(void **state) {
  ls_config_t c;
  parse_ok("{" A_LLAMA SIZES ", \"rope_theta\": 250000.0, \"rope_scaling\": {\"type\": "
           "\"linear\", \"factor\": 2.0}}", &c);
  assert_true(c.rope.theta == 250000.0);
  assert_int_equal(c.rope.type, LS_ROPE_LINEAR);
  assert_true(c.rope.factor == 2.0);
  /* the fixture llama3 form (rope_type key inside rope_scaling) */
  parse_ok("{" A_LLAMA SIZES ", \"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0, "
           "\"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, "
           "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}", &c);
  assert_int_equal(c.rope.type, LS_ROPE_LLAMA3);
  assert_true(c.rope.theta == 500000.0);
  assert_true(c.rope.factor == 8.0);
  assert_true(c.rope.low_freq_factor == 1.0);
  assert_true(c.rope.high_freq_factor == 4.0);
  assert_int_equal(c.rope.orig_max_pos, 8192);
  /* explicit default */
  parse_ok("{" A_LLAMA SIZES ", \"rope_scaling\": {\"rope_type\": \"default\"}}", &c);
  assert_int_equal(c.rope.type, LS_ROPE_DEFAULT);
  assert_true(c.rope.factor == 1.0);
}

static void test_rope_parameters(void **state) {
  ls_config_t c;
  /* transformers 5: theta lives inside rope_parameters, no top-level rope_theta */
  parse_ok("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_theta\": 1000000.0, "
           "\"rope_type\": \"default\"}}", &c);
  assert_true(c.rope.theta == 1e6);
  assert_int_equal(c.rope.type, LS_ROPE_DEFAULT);
  parse_ok("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_theta\": 10000.0, "
           "\"rope_type\": \"linear\", \"factor\": 4.0}}", &c);
  assert_true(c.rope.theta == 10000.0);
  assert_int_equal(c.rope.type, LS_ROPE_LINEAR);
  assert_true(c.rope.factor == 4.0);
  parse_ok("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_theta\": 500000.0, "
           "\"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 2.0, "
           "\"high_freq_factor\": 8.0, \"original_max_position_embeddings\": 4096}}", &c);
  assert_true(c.rope.theta == 500000.0);
  assert_int_equal(c.rope.type, LS_ROPE_LLAMA3);
  assert_true(c.rope.factor == 32.0);
  assert_true(c.rope.low_freq_factor == 2.0);
  assert_true(c.rope.high_freq_factor == 8.0);
  assert_int_equal(c.rope.orig_max_pos, 4096);
  /* rope_theta inside rope_parameters wins over a stale top-level one */
  parse_ok("{" A_LLAMA SIZES ", \"rope_theta\": 10000.0, \"rope_parameters\": "
           "{\"rope_theta\": 300000.0, \"rope_type\": \"default\"}}", &c);
  assert_true(c.rope.theta == 300000.0);
  /* and the top-level one is the fallback */
  parse_ok("{" A_LLAMA SIZES ", \"rope_theta\": 20000.0, \"rope_parameters\": "
           "{\"rope_type\": \"default\"}}", &c);
  assert_true(c.rope.theta == 20000.0);
}

/* ---- bad configs: one line naming the file ------------------------------------------- */

static void test_bad_arch(void **state) {
  const char *families = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                         "Qwen3ForCausalLM, Olmo2ForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, "
                         "Gemma3ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel, GPT2Model, "
                         "GPTNeoXForCausalLM";
  expect_bad2("{\"architectures\": [\"BloomForCausalLM\"], \"model_type\": \"bloom\", " SIZES "}",
              "\"BloomForCausalLM\"", families);
  expect_bad2("{\"model_type\": \"gemma3\", " SIZES "}", "\"gemma3\"", families);
  expect_bad2("{" SIZES "}", "unsupported model architecture", families);
  expect_bad2("{\"architectures\": [], " SIZES "}", "unsupported model architecture", families);
  /* case matters: these are class names */
  expect_bad2("{\"architectures\": [\"llamaforcausallm\"], " SIZES "}", "llamaforcausallm",
              families);
}

static void test_bad_missing(void **state) {
  expect_bad("{" A_LLAMA "\"intermediate_size\": 96, \"num_hidden_layers\": 3, "
             "\"num_attention_heads\": 4, \"vocab_size\": 256}", "\"hidden_size\" is missing");
  expect_bad("{" A_LLAMA "\"hidden_size\": null, \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"vocab_size\": 256}",
             "\"hidden_size\"");
  expect_bad("{" A_LLAMA "\"hidden_size\": 64, \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4}", "\"vocab_size\" is missing");
  expect_bad("{" A_LLAMA "\"hidden_size\": 64, \"intermediate_size\": 96, "
             "\"num_attention_heads\": 4, \"vocab_size\": 256}", "\"num_hidden_layers\"");
}

static void test_bad_integer(void **state) {
  expect_bad("{" A_LLAMA SIZES ", \"num_key_value_heads\": 2.5}", "\"num_key_value_heads\" must be an integer");
  expect_bad("{" A_LLAMA "\"hidden_size\": \"64\", \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"vocab_size\": 256}",
             "\"hidden_size\" must be an integer");
  expect_bad("{" A_LLAMA "\"hidden_size\": 64, \"intermediate_size\": 0, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"vocab_size\": 256}",
             "\"intermediate_size\"");
  expect_bad("{" A_LLAMA "\"hidden_size\": 64, \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": -4, \"vocab_size\": 256}",
             "\"num_attention_heads\"");
  expect_bad("{" A_LLAMA "\"hidden_size\": 1e30, \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"vocab_size\": 256}",
             "\"hidden_size\"");
  expect_bad("{" A_LLAMA SIZES ", \"head_dim\": true}", "\"head_dim\"");
  expect_bad("{" A_LLAMA SIZES ", \"rms_norm_eps\": \"1e-5\"}", "\"rms_norm_eps\"");
  expect_bad("{" A_LLAMA SIZES ", \"rope_theta\": -1}", "\"rope_theta\"");
}

static void test_bad_heads(void **state) {
  expect_bad("{" A_LLAMA SIZES ", \"num_key_value_heads\": 3}",
             "num_attention_heads 4 must be a multiple of num_key_value_heads 3");
  expect_bad("{" A_LLAMA SIZES ", \"num_key_value_heads\": 8}", "num_key_value_heads 8");
  /* hidden 60 / 8 heads without head_dim */
  expect_bad("{" A_LLAMA "\"hidden_size\": 60, \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 8, \"vocab_size\": 256}",
             "not divisible by num_attention_heads");
}

static void test_bad_head_dim(void **state) {
  expect_bad("{" A_LLAMA SIZES ", \"head_dim\": 15}", "head_dim 15 must be even");
  /* odd derived head_dim: 60 / 4 = 15 */
  expect_bad("{" A_LLAMA "\"hidden_size\": 60, \"intermediate_size\": 96, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"vocab_size\": 256}",
             "head_dim 15");
  expect_bad("{" A_LLAMA SIZES ", \"head_dim\": 0}", "\"head_dim\"");
}

static void test_bad_rope(void **state) {
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 4.0}}",
             "\"dynamic\" is not supported");
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}}",
             "original_max_position_embeddings"); /* yarn needs it */
  expect_bad("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_theta\": 10000.0, "
             "\"rope_type\": \"dynamic\", \"factor\": 2.0}}", "\"dynamic\"");
  expect_bad("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_theta\": 10000.0, "
             "\"rope_type\": \"longrope\"}}", "longrope");
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": \"linear\"}", "\"rope_scaling\"");
  expect_bad("{" A_LLAMA SIZES ", \"rope_parameters\": [1]}", "\"rope_parameters\"");
  /* llama3 without its original context, or with inverted band factors */
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
             "\"original_max_position_embeddings\"");
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
             "\"low_freq_factor\": 4.0, \"high_freq_factor\": 1.0, "
             "\"original_max_position_embeddings\": 8192}}", "high_freq_factor > low_freq_factor");
  expect_bad("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_theta\": 0, "
             "\"rope_type\": \"default\"}}", "\"rope_theta\"");
  expect_bad("{" A_LLAMA SIZES ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": \"2\"}}",
             "\"factor\"");
}

static void test_bad_act(void **state) {
  expect_bad("{" A_LLAMA SIZES ", \"hidden_act\": \"gelu\"}", "hidden_act must be \"silu\"");
  expect_bad("{" A_QWEN2 SIZES ", \"hidden_act\": \"gelu_pytorch_tanh\"}", "Qwen2ForCausalLM");
  expect_bad("{" A_LLAMA SIZES ", \"hidden_act\": 1}", "hidden_act");
}

static void test_bad_json(void **state) {
  expect_bad("{" A_LLAMA SIZES ",", "not a valid JSON object");
  expect_bad("", "not a valid JSON object");
  expect_bad("[{" A_LLAMA SIZES "}]", "not a valid JSON object");
  expect_bad("{" A_LLAMA SIZES ", \"hidden_size\" 64}", "not a valid JSON object");
  expect_bad("\"LlamaForCausalLM\"", "not a valid JSON object");
}

/* ---- rope inverse frequencies ------------------------------------------------------- */

/* transformers' formulas in double precision: modeling_rope_utils._compute_default /
 * _linear_scaling / _llama3_parameters. Returns a bitmask of the llama3 bands seen
 * (1 high frequency kept, 2 low frequency divided, 4 smoothed). */
static int ref_inv_freq(const ls_config_t *c, double *out) {
  const int dim = c->rope_dim, half = dim / 2;
  int bands = 0;
  for (int i = 0; i < half; i++) {
    double f = 1.0 / pow(c->rope.theta, (double)(2 * i) / dim);
    if (c->rope.type == LS_ROPE_LINEAR) f /= c->rope.factor;
    if (c->rope.type == LS_ROPE_LLAMA3) {
      double factor = c->rope.factor, lo = c->rope.low_freq_factor,
             hi = c->rope.high_freq_factor, old = c->rope.orig_max_pos;
      double low_wavelen = old / lo, high_wavelen = old / hi;
      double wavelen = 2 * M_PI / f;
      double llama = wavelen > low_wavelen ? f / factor : f;
      double smooth = (old / wavelen - lo) / (hi - lo);
      double smoothed = (1 - smooth) * llama / factor + smooth * llama;
      int medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      bands |= medium ? 4 : wavelen > low_wavelen ? 2 : 1;
      f = medium ? smoothed : llama;
    }
    if (c->rope.type == LS_ROPE_YARN) { /* _compute_yarn_parameters, truncate true */
      const double b = c->rope.theta, ctx = c->rope.orig_max_pos;
      double lo = floor(dim * log(ctx / (c->rope.beta_fast * 2 * M_PI)) / (2 * log(b)));
      double hi = ceil(dim * log(ctx / (c->rope.beta_slow * 2 * M_PI)) / (2 * log(b)));
      lo = fmax(lo, 0);
      hi = fmin(hi, dim - 1);
      if (lo == hi) hi += 0.001;
      const double ramp = fmin(fmax((i - lo) / (hi - lo), 0.0), 1.0), ef = 1 - ramp;
      f = f / c->rope.factor * (1 - ef) + f * ef;
      bands |= ramp == 0 ? 1 : ramp == 1 ? 2 : 4;
    }
    out[i] = f;
  }
  return bands;
}

static void check_inv_freq(const char *json, int want_bands) {
  ls_config_t c;
  parse_ok(json, &c);
  const int half = c.rope_dim / 2;
  float *got = malloc(sizeof(float) * (half + 4));
  double *want = malloc(sizeof(double) * half);
  assert_true(got && want);
  for (int i = 0; i < half + 4; i++) got[i] = NAN;
  int bands = ref_inv_freq(&c, want);
  ls_config_rope_inv_freq(&c.rope, c.rope_dim, got);
  double worst = 0;
  for (int i = 0; i < half; i++) {
    double err = fabs((double)got[i] - want[i]) / fabs(want[i]);
    if (!isfinite(got[i]) || !(err <= 1e-6)) {
      fprintf(stderr, "rope inv_freq (head_dim %d, theta %g, type %d) [%d]: got %.9g want %.9g "
              "(rel err %.3g)\n", c.head_dim, c.rope.theta, (int)c.rope.type, i, got[i], want[i],
              err);
      fail();
    }
    if (err > worst) worst = err;
  }
  for (int i = half; i < half + 4; i++) assert_true(isnan(got[i])); /* nothing past half */
  if (getenv("LS_TEST_VERBOSE"))
    fprintf(stderr, "  inv_freq head_dim %d type %d: max rel err %.3g\n", c.head_dim,
            (int)c.rope.type, worst);
  if (want_bands) assert_int_equal(bands, want_bands);
  free(got);
  free(want);
}

static void test_rope_inv_freq(void **state) {
  /* default */
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 8}", 0);
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 64, \"rope_theta\": 10000.0}", 0);
  check_inv_freq("{" A_QWEN2 SIZES ", \"head_dim\": 128, \"rope_theta\": 1000000.0}", 0);
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 128, \"rope_parameters\": "
                 "{\"rope_theta\": 500000.0, \"rope_type\": \"default\"}}", 0);
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 96, \"rope_theta\": 75000000.0}", 0);
  /* linear */
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 8, \"rope_scaling\": {\"type\": \"linear\", "
                 "\"factor\": 2.0}}", 0);
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 128, \"rope_parameters\": {\"rope_theta\": "
                 "1000000.0, \"rope_type\": \"linear\", \"factor\": 3.0}}", 0);
  /* llama3: Llama 3.1's real parameters and the fixture's (all three bands) */
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 128, \"rope_theta\": 500000.0, "
                 "\"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
                 "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, "
                 "\"rope_type\": \"llama3\"}}", 7);
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 32, \"rope_theta\": 10000.0, "
                 "\"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
                 "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 32, "
                 "\"rope_type\": \"llama3\"}}", 7);
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 64, \"rope_parameters\": {\"rope_theta\": "
                 "500000.0, \"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 1.0,"
                 " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", 7);
  /* yarn: DeepSeek-V3's parameters (extrapolated, ramped and interpolated dims) */
  check_inv_freq("{" A_LLAMA SIZES ", \"head_dim\": 64, \"rope_theta\": 10000.0, "
                 "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, \"beta_fast\": 32, "
                 "\"beta_slow\": 1, \"mscale\": 1.0, \"mscale_all_dim\": 1.0, "
                 "\"original_max_position_embeddings\": 4096}}", 7);
}

/* ---- mixtures of experts, DeepSeek, quantization ------------------------------------------- */
#define MOE_SIZES SIZES ", \"moe_intermediate_size\": 24"
static void test_moe_configs(void **state) {
  ls_config_t c;
  parse_ok("{\"architectures\": [\"MixtralForCausalLM\"], " SIZES ", \"num_local_experts\": 8, "
           "\"num_experts_per_tok\": 2}", &c);
  assert_int_equal(c.n_experts, 8);
  assert_int_equal(c.moe_intermediate, 96); /* Mixtral's experts: intermediate_size */
  assert_int_equal(c.norm_topk_prob, 1);
  for (int L = 0; L < 3; L++) assert_true(ls_config_is_moe(&c, L));
  parse_ok("{\"architectures\": [\"Qwen2MoeForCausalLM\"], " MOE_SIZES ", \"num_experts\": 6, "
           "\"num_experts_per_tok\": 2, \"shared_expert_intermediate_size\": 40, \"mlp_only_layers\": [1]}", &c);
  assert_true(ls_config_is_moe(&c, 0) && !ls_config_is_moe(&c, 1) && ls_config_is_moe(&c, 2));
  assert_int_equal(c.shared_intermediate, 40);
  assert_int_equal(c.shared_gate, 1);
  assert_int_equal(c.qkv_bias, 1);
  parse_ok("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " MOE_SIZES ", \"num_local_experts\": 8, "
           "\"num_experts_per_tok\": 2, \"decoder_sparse_step\": 2, \"norm_topk_prob\": true}", &c);
  assert_true(!ls_config_is_moe(&c, 0) && ls_config_is_moe(&c, 1) && !ls_config_is_moe(&c, 2));
  assert_int_equal(c.norm_topk_prob, 1);
  expect_bad2("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " MOE_SIZES ", \"num_experts\": 4, "
              "\"num_experts_per_tok\": 5}", "num_experts_per_tok", "[1, 4]");
  expect_bad("{\"architectures\": [\"OlmoeForCausalLM\"], " SIZES ", \"num_experts\": 4, "
             "\"num_experts_per_tok\": 2, \"clip_qkv\": 8.0}", "clip_qkv");
  expect_bad("{\"architectures\": [\"Qwen2MoeForCausalLM\"], " MOE_SIZES ", \"num_experts\": 4, "
             "\"num_experts_per_tok\": 2, \"shared_expert_intermediate_size\": 8, \"mlp_only_layers\": [7]}", "mlp_only_layers");
  /* DeepSeek-V3: MLA sizes, grouped sigmoid routing, dense first layer, yarn */
  const char *v3 = "{\"architectures\": [\"DeepseekV3ForCausalLM\"], " MOE_SIZES
                   ", \"n_routed_experts\": 8, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1, "
                   "\"first_k_dense_replace\": 1, \"n_shared_experts\": 1, "
                   "\"routed_scaling_factor\": 2.5, \"q_lora_rank\": 24, \"kv_lora_rank\": 16, "
                   "\"qk_rope_head_dim\": 8, \"qk_nope_head_dim\": 12, \"v_head_dim\": 10, "
                   "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, \"mscale\": 1.0, "
                   "\"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 4096}}";
  parse_ok(v3, &c);
  assert_true(!ls_config_is_moe(&c, 0) && ls_config_is_moe(&c, 1));
  assert_int_equal(c.head_dim, 20);
  assert_int_equal(c.rope_dim, 8);
  assert_int_equal(c.shared_intermediate, 24);
  assert_true(c.router_sigmoid && c.router_bias && c.group_top2 && c.norm_topk_prob);
  assert_int_equal(c.n_group, 2);
  assert_true(c.routed_scale == 2.5);
  assert_int_equal(c.rope.type, LS_ROPE_YARN);
  assert_true(c.rope.attn_factor == 1.0); /* mscale / mscale_all_dim */
  assert_true(fabs(ls_yarn_mscale(40, 1.0) - (0.1 * log(40.0) + 1)) < 1e-15);
  expect_bad("{\"architectures\": [\"DeepseekV3ForCausalLM\"], " MOE_SIZES
             ", \"n_routed_experts\": 8, \"num_experts_per_tok\": 2, \"n_group\": 3, \"topk_group\": 1, \"kv_lora_rank\": 16, "
             "\"qk_rope_head_dim\": 8, \"qk_nope_head_dim\": 12, \"v_head_dim\": 10}", "n_group 3");
  expect_bad("{\"architectures\": [\"DeepseekV2ForCausalLM\"], " MOE_SIZES
             ", \"n_routed_experts\": 8, \"num_experts_per_tok\": 2, \"topk_method\": \"noaux_tc\", \"kv_lora_rank\": 16, "
             "\"qk_rope_head_dim\": 8, \"qk_nope_head_dim\": 12, \"v_head_dim\": 10}", "topk_method");
  expect_bad("{\"architectures\": [\"DeepseekV2ForCausalLM\"], " MOE_SIZES
             ", \"n_routed_experts\": 8, \"num_experts_per_tok\": 2, \"moe_layer_freq\": 2, \"kv_lora_rank\": 16, "
             "\"qk_rope_head_dim\": 8, \"qk_nope_head_dim\": 12, \"v_head_dim\": 10}", "moe_layer_freq");
  /* quantization: fp8 read; others refused by name */
  parse_ok("{" A_LLAMA SIZES ", \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": "
           "\"e5m2\", \"weight_block_size\": [128, 64]}}", &c);
  assert_true(c.fp8 && c.fp8_dtype == LS_DT_F8_E5M2 && c.fp8_block[0] == 128 && c.fp8_block[1] == 64);
  expect_bad2("{" A_LLAMA SIZES ", \"quantization_config\": {\"quant_method\": \"gptq\", "
              "\"bits\": 4}}", "quant_method", "gptq");
  expect_bad2("{" A_LLAMA SIZES ", \"quantization_config\": {\"quant_method\": \"awq\"}}",
              "quant_method", "awq");
  expect_bad("{" A_LLAMA SIZES ", \"quantization_config\": {\"quant_method\": \"fp8\"}}",
             "weight_block_size");
  expect_bad("{" A_LLAMA SIZES ", \"quantization_config\": {\"quant_method\": \"fp8\", "
             "\"weight_block_size\": [0, 128]}}", "weight_block_size[0]");
  expect_bad("{" A_LLAMA SIZES ", \"quantization_config\": {\"quant_method\": \"fp8\", "
             "\"fmt\": \"int4\", \"weight_block_size\": [128, 128]}}", "fmt");
}

/* ---- flops ------------------------------------------------------------------------------- */

static void test_gemm_flops(void **state) {
  ls_config_t c;
  /* H 64, 4 heads of 16, 2 kv heads, I 96:
   * q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate/up/down 3*64*96 = 30720 MACs */
  parse_ok("{" A_LLAMA SIZES ", \"num_key_value_heads\": 2}", &c);
  assert_true(ls_family_gemm_flops_per_token(&c) == 61440.0);
  /* explicit head_dim 32: q/o are 64x128, k/v 64x64:
   * 8192 + 4096 + 4096 + 8192 + 18432 = 43008 MACs */
  parse_ok("{" A_LLAMA SIZES ", \"num_key_value_heads\": 2, \"head_dim\": 32}", &c);
  assert_true(ls_family_gemm_flops_per_token(&c) == 86016.0);
  /* Llama-3-8B: H 4096, 32 heads, 8 kv, I 14336 -> 2 * 218103808 */
  parse_ok("{" A_LLAMA "\"hidden_size\": 4096, \"intermediate_size\": 14336, "
           "\"num_hidden_layers\": 32, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, "
           "\"vocab_size\": 128256}", &c);
  assert_true(ls_family_gemm_flops_per_token(&c) == 436207616.0);
}

/* ---- Qwen3 and OLMo-2: their own defaults, per-layer windows ---------------------------------- */
static void test_qwen3(void **state) {
  ls_config_t c;
  /* Qwen3Config defaults: head_dim 128 (not hidden / heads), no biases, no window */
  parse_ok("{" A_QWEN3 SIZES "}", &c);
  assert_string_equal(c.model_type, "qwen3");
  assert_int_equal(c.head_dim, 128);
  assert_int_equal(c.qkv_bias, 0);
  assert_int_equal(c.sliding_window, 0);
  for (int L = 0; L < 3; L++) assert_int_equal(ls_config_window(&c, L), 0);
  parse_ok("{" A_QWEN3 SIZES ", \"head_dim\": 24, \"attention_bias\": true}", &c);
  assert_int_equal(c.head_dim, 24);
  assert_int_equal(c.qkv_bias, 1);
  assert_int_equal(c.o_bias, 1);
  /* sliding_window counts only with use_sliding_window */
  parse_ok("{" A_QWEN3 SIZES ", \"sliding_window\": 8}", &c);
  assert_int_equal(ls_config_window(&c, 2), 0);
  /* max_window_layers: layers from it on slide (when layer_types is absent) */
  parse_ok("{" A_QWEN3 SIZES ", \"use_sliding_window\": true, \"sliding_window\": 8, "
           "\"max_window_layers\": 1}", &c);
  assert_int_equal(ls_config_window(&c, 0), 0);
  assert_int_equal(ls_config_window(&c, 1), 8);
  assert_int_equal(ls_config_window(&c, 2), 8);
  /* layer_types wins over max_window_layers */
  parse_ok("{" A_QWEN3 SIZES ", \"use_sliding_window\": true, \"sliding_window\": 8, "
           "\"max_window_layers\": 0, \"layer_types\": [\"sliding_attention\", "
           "\"full_attention\", \"sliding_attention\"]}", &c);
  assert_int_equal(ls_config_window(&c, 0), 8);
  assert_int_equal(ls_config_window(&c, 1), 0);
  assert_int_equal(ls_config_window(&c, 2), 8);
  /* sliding layers without a window in effect: transformers raises, so do we */
  expect_bad("{" A_QWEN3 SIZES ", \"layer_types\": [\"sliding_attention\", "
             "\"full_attention\", \"full_attention\"]}", "no sliding_window");
  expect_bad("{" A_QWEN3 SIZES ", \"layer_types\": [\"full_attention\"]}", "3 entries");
  expect_bad("{" A_QWEN3 SIZES ", \"use_sliding_window\": true, \"layer_types\": "
             "[\"full_attention\", \"chunked\", \"full_attention\"]}", "layer_types[1]");
  expect_bad("{" A_QWEN3 SIZES ", \"hidden_act\": \"gelu\"}", "hidden_act");
}

static void test_olmo2(void **state) {
  ls_config_t c;
  parse_ok("{" A_OLMO2 SIZES "}", &c);
  assert_string_equal(c.arch_name, "Olmo2ForCausalLM");
  assert_int_equal(c.head_dim, 16);
  assert_true(c.rms_eps == 1e-5); /* Olmo2Config's default, not 1e-6 */
  parse_ok("{\"model_type\": \"olmo2\", " SIZES ", \"rms_norm_eps\": 1e-6}", &c);
  assert_true(c.rms_eps == 1e-6);
  expect_bad("{" A_OLMO2 SIZES ", \"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 2}}",
             "longrope");
}

/* ---- Gemma and Gemma 2 ------------------------------------------------------------------------ */
static void test_gemma(void **state) {
  ls_config_t c;
  /* GemmaConfig defaults: head_dim 256, gelu_pytorch_tanh, tied */
  parse_ok("{" A_GEMMA SIZES "}", &c);
  assert_int_equal(c.head_dim, 256);
  assert_int_equal(c.tie_embeddings, 1);
  assert_true(c.attn_scale == 0 && c.attn_softcap == 0);
  const ls_family_t *fam = ls_family_get(c.family);
  assert_non_null(fam->embed_scale);
  assert_true(fam->embed_scale(&c) == (float)8.0); /* sqrt(64) */
  parse_ok("{" A_GEMMA SIZES ", \"hidden_act\": \"gelu_pytorch_tanh\", \"head_dim\": 16}", &c);
  assert_int_equal(c.head_dim, 16);
  /* exact GELU and bidirectional attention are refused by name */
  expect_bad("{" A_GEMMA SIZES ", \"hidden_act\": \"gelu\"}", "hidden_act");
  expect_bad("{" A_GEMMA SIZES ", \"use_bidirectional_attention\": true}",
             "use_bidirectional_attention");
}

static void test_gemma2(void **state) {
  ls_config_t c;
  /* Gemma2Config defaults: query_pre_attn_scalar 256, soft-capping 50, window 4096 on
   * every other layer from layer 0 */
  parse_ok("{" A_GEMMA2 SIZES "}", &c);
  assert_true(c.attn_scale == 1.0 / 16.0);
  assert_true(c.attn_softcap == 50.0);
  assert_int_equal(ls_config_window(&c, 0), 4096);
  assert_int_equal(ls_config_window(&c, 1), 0);
  assert_int_equal(ls_config_window(&c, 2), 4096);
  parse_ok("{" A_GEMMA2 SIZES ", \"attn_logit_softcapping\": null, \"sliding_window\": null, "
           "\"query_pre_attn_scalar\": 64, \"layer_types\": [\"full_attention\", "
           "\"full_attention\", \"full_attention\"]}", &c);
  assert_true(c.attn_softcap == 0);
  assert_true(c.attn_scale == 0.125);
  for (int L = 0; L < 3; L++) assert_int_equal(ls_config_window(&c, L), 0);
  /* Gemma 2 reads hidden_activation, not hidden_act */
  parse_ok("{" A_GEMMA2 SIZES ", \"hidden_act\": \"silu\"}", &c);
  expect_bad("{" A_GEMMA2 SIZES ", \"hidden_activation\": \"silu\"}", "hidden_activation");
  expect_bad("{" A_GEMMA2 SIZES ", \"sliding_window\": null}", "no sliding_window");
}

/* ---- Gemma 3, Phi-3, GPT-2, GPT-NeoX --------------------------------------------------- */
#define A_GEMMA3 "\"architectures\": [\"Gemma3ForCausalLM\"], \"model_type\": \"gemma3_text\", "
#define A_PHI3 "\"architectures\": [\"Phi3ForCausalLM\"], \"model_type\": \"phi3\", "
#define A_NEOX "\"architectures\": [\"GPTNeoXForCausalLM\"], \"model_type\": \"gpt_neox\", "
#define GPT2 "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\", \"n_embd\": 64, " \
             "\"n_layer\": 3, \"n_head\": 4, \"vocab_size\": 256"

static void test_gemma3(void **state) {
  ls_config_t c;
  /* the classic keys: rope_theta (1e6) + rope_scaling for the global layers,
   * rope_local_base_freq (1e4) for the sliding ones; pattern 6 by default */
  parse_ok("{" A_GEMMA3 "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 7, "
           "\"num_attention_heads\": 4, \"vocab_size\": 256, \"rope_scaling\": {\"rope_type\": "
           "\"linear\", \"factor\": 8.0}}", &c);
  assert_int_equal(c.local_rope, 1);
  assert_true(c.rope.theta == 1e6 && c.rope.type == LS_ROPE_LINEAR && c.rope.factor == 8.0);
  assert_true(c.rope_local.theta == 1e4 && c.rope_local.type == LS_ROPE_DEFAULT);
  assert_true(c.attn_softcap == 0 && c.attn_scale == 1.0 / 16.0);
  for (int L = 0; L < 7; L++) {
    assert_int_equal(ls_config_window(&c, L), L == 5 ? 0 : 4096);
    assert_ptr_equal(ls_config_rope(&c, L), L == 5 ? &c.rope : &c.rope_local);
  }
  /* transformers 5: one parameter set per layer kind; sliding_window_pattern 2 */
  parse_ok("{" A_GEMMA3 SIZES ", \"sliding_window_pattern\": 2, \"rope_parameters\": "
           "{\"full_attention\": {\"rope_type\": \"default\", \"rope_theta\": 5e5}, "
           "\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 2e4}}}", &c);
  assert_true(c.rope.theta == 5e5 && c.rope_local.theta == 2e4);
  assert_ptr_equal(ls_config_rope(&c, 0), &c.rope_local);
  assert_ptr_equal(ls_config_rope(&c, 1), &c.rope);
  expect_bad("{" A_GEMMA3 SIZES ", \"rope_parameters\": {\"sliding_attention\": {\"rope_type\": "
             "\"dynamic\"}}}", "\"dynamic\" is not supported");
  expect_bad("{" A_GEMMA3 SIZES ", \"use_bidirectional_attention\": true}",
             "use_bidirectional_attention");
}

static void test_phi3(void **state) {
  ls_config_t c;
  parse_ok("{" A_PHI3 SIZES ", \"sliding_window\": 2047, \"rope_theta\": 10000.0, "
           "\"rope_scaling\": null}", &c);
  assert_int_equal(c.rope_dim, c.head_dim);
  for (int L = 0; L < 3; L++) assert_int_equal(ls_config_window(&c, L), 2047);
  parse_ok("{" A_PHI3 SIZES ", \"partial_rotary_factor\": 0.5}", &c);
  assert_int_equal(c.rope_dim, c.head_dim / 2);
  /* LongRoPE is refused by name, in either spelling */
  expect_bad("{" A_PHI3 SIZES ", \"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": "
             "[1], \"long_factor\": [1]}}", "\"longrope\" is not supported");
  expect_bad("{" A_PHI3 SIZES ", \"rope_parameters\": {\"rope_type\": \"su\"}}",
             "\"su\" is not supported");
  /* a rotary fraction giving an odd dim count */
  expect_bad("{" A_PHI3 SIZES ", \"partial_rotary_factor\": 0.35}", "even number");
  /* families that rotate whole heads refuse a partial factor */
  expect_bad("{" A_LLAMA SIZES ", \"rope_parameters\": {\"rope_type\": \"default\", "
             "\"partial_rotary_factor\": 0.5}}", "partial_rotary_factor");
}

static void test_gpt2(void **state) {
  ls_config_t c;
  parse_ok(GPT2 "}", &c); /* GPT2Config defaults */
  assert_int_equal(c.intermediate, 256);
  assert_int_equal(c.max_pos, 1024);
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.rope_dim, 0);
  assert_int_equal(c.gelu_tanh, 1);
  assert_true(c.attn_scale == 0 && c.attn_scale_by_layer == 0);
  assert_true(c.rms_eps == 1e-5 && c.tie_embeddings == 1);
  parse_ok(GPT2 ", \"n_inner\": 100, \"activation_function\": \"gelu\", \"scale_attn_weights\": "
           "false, \"scale_attn_by_inverse_layer_idx\": true, \"n_positions\": 64}", &c);
  assert_int_equal(c.intermediate, 100);
  assert_int_equal(c.gelu_tanh, 0);
  assert_true(c.attn_scale == 1.0 && c.attn_scale_by_layer == 1);
  assert_int_equal(c.max_pos, 64);
  expect_bad(GPT2 ", \"add_cross_attention\": true}", "add_cross_attention");
  expect_bad(GPT2 ", \"activation_function\": \"relu\"}", "\"relu\" is not supported");
  expect_bad("{\"architectures\": [\"GPT2LMHeadModel\"], \"n_layer\": 3}", "\"n_embd\"");
}

static void test_gpt_neox(void **state) {
  ls_config_t c;
  /* the classic Pythia keys: rotary_pct, rotary_emb_base, layer_norm_eps */
  parse_ok("{" A_NEOX SIZES ", \"rotary_pct\": 0.25, \"rotary_emb_base\": 20000, "
           "\"layer_norm_eps\": 1e-05}", &c);
  assert_int_equal(c.rope_dim, 4); /* head_dim 16 */
  assert_true(c.rope.theta == 20000.0 && c.rms_eps == 1e-5);
  assert_int_equal(c.parallel_residual, 1);
  assert_int_equal(c.gelu_tanh, 0);
  assert_true(c.qkv_bias == 1 && c.o_bias == 1);
  /* transformers 5: rope_parameters */
  parse_ok("{" A_NEOX SIZES ", \"use_parallel_residual\": false, \"attention_bias\": false, "
           "\"hidden_act\": \"gelu_new\", \"rope_parameters\": {\"rope_type\": \"default\", "
           "\"rope_theta\": 10000.0, \"partial_rotary_factor\": 0.5}}", &c);
  assert_int_equal(c.rope_dim, 8);
  assert_true(c.parallel_residual == 0 && c.qkv_bias == 0 && c.gelu_tanh == 1);
  expect_bad("{" A_NEOX SIZES ", \"hidden_act\": \"silu\"}", "hidden_act");
}

/* ---- the fixture configs (written by transformers 5.17) ------------------------------- */

static void test_fixture_configs(void **state) {
  const char *dir = getenv("LS_FIXTURES");
  if (!dir || !*dir) skip();
  char p[4200];
  ls_config_t c;
  snprintf(p, sizeof p, "%s/llama3_rope_f16", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_int_equal(c.rope.type, LS_ROPE_LLAMA3);
  assert_int_equal(c.rope.orig_max_pos, 32);
  assert_int_equal(c.head_dim, 32);
  assert_int_equal(c.tie_embeddings, 1);
  snprintf(p, sizeof p, "%s/llama_gqa_f32", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_int_equal(c.n_kv_heads, 2);
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.intermediate, 160);
  assert_int_equal(c.rope.type, LS_ROPE_DEFAULT);
  snprintf(p, sizeof p, "%s/llama_linear_rope", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_int_equal(c.rope.type, LS_ROPE_LINEAR);
  assert_true(c.rope.factor == 2.0);
  assert_true(c.rms_eps == 1e-6);
  snprintf(p, sizeof p, "%s/llama_mqa_bf16", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_int_equal(c.n_kv_heads, 1);
  snprintf(p, sizeof p, "%s/mistral_window", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_string_equal(c.arch_name, "MistralForCausalLM");
  assert_int_equal(c.sliding_window, 8);
  snprintf(p, sizeof p, "%s/qwen2_bias_sharded", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_string_equal(c.arch_name, "Qwen2ForCausalLM");
  assert_int_equal(c.sliding_window, 0);
  assert_int_equal(c.qkv_bias, 1);
  assert_true(c.rope.theta == 1e6);
  snprintf(p, sizeof p, "%s/qwen3_qknorm_window", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_int_equal(c.head_dim, 24);
  assert_int_equal(ls_config_window(&c, 0), 0);
  assert_int_equal(ls_config_window(&c, 1), 8);
  snprintf(p, sizeof p, "%s/olmo2_postnorm", dir);
  assert_int_equal(ls_config_load(p, &c), 0);
  assert_string_equal(c.arch_name, "Olmo2ForCausalLM");
  /* a missing directory: one line naming it and what --model must be */
  snprintf(p, sizeof p, "%s/no_such_model", dir);
  capture_t cap;
  capture_begin(&cap);
  int rc = ls_config_load(p, &c);
  size_t len;
  char *msg = capture_end(&cap, &len);
  assert_int_equal(rc, -1);
  char want[4300];
  snprintf(want, sizeof want, "%s: not a directory", p);
  const char *needles[2] = {want, "--model"};
  assert_one_line(msg, len, needles, 2);
  free(msg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_llama_full),
      cmocka_unit_test(test_moe_configs),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_mistral),
      cmocka_unit_test(test_qwen2),
      cmocka_unit_test(test_model_type_only),
      cmocka_unit_test(test_head_dim),
      cmocka_unit_test(test_biases),
      cmocka_unit_test(test_rope_classic),
      cmocka_unit_test(test_rope_parameters),
      cmocka_unit_test(test_gemma3),
      cmocka_unit_test(test_phi3),
      cmocka_unit_test(test_gpt2),
      cmocka_unit_test(test_gpt_neox),
      cmocka_unit_test(test_bad_arch),
      cmocka_unit_test(test_bad_missing),
      cmocka_unit_test(test_bad_integer),
      cmocka_unit_test(test_bad_heads),
      cmocka_unit_test(test_bad_head_dim),
      cmocka_unit_test(test_bad_rope),
      cmocka_unit_test(test_bad_act),
      cmocka_unit_test(test_bad_json),
      cmocka_unit_test(test_rope_inv_freq),
      cmocka_unit_test(test_gemm_flops),
      cmocka_unit_test(test_qwen3),
      cmocka_unit_test(test_olmo2),
      cmocka_unit_test(test_gemma),
      cmocka_unit_test(test_gemma2),
      cmocka_unit_test(test_fixture_configs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
