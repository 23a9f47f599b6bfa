/* fuzz_config.c: libFuzzer target for ls_config_parse (config.json) and the RoPE
 * frequencies derived from an accepted config.
 *
 * The input is parsed as config.json text (a NUL-terminated copy). If it is accepted,
 * the fields must satisfy what the rest of layersweep assumes (positive sizes, even
 * head_dim, GQA divisibility, finite rope parameters), and ls_config_rope_inv_freq
 * must give head_dim / 2 finite frequencies: a NaN or Inf there would poison every
 * attention layer of a run, so it is a bug in the validation or in the arithmetic.
 * Only finiteness is checked, not sign or range. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "family.h"
#include "fuzz_util.h"
#include "ls_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int init;
  if (!init) {
    ls_error_set_quiet(getenv("LS_FUZZ_VERBOSE") == NULL); /* errors on: triage */
    init = 1;
  }
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  ls_config_t cfg;
  const int rc = ls_config_parse(text, "fuzz/config.json", &cfg);
  free(text);
  if (rc != LS_OK) return 0;

  FUZZ_ASSERT(cfg.hidden > 0 && cfg.intermediate > 0 && cfg.n_layers > 0 && cfg.vocab > 0,
              "non-positive size accepted");
  FUZZ_ASSERT(cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0,
              "heads %d kv_heads %d accepted", cfg.n_heads, cfg.n_kv_heads);
  FUZZ_ASSERT(cfg.head_dim > 0 && cfg.head_dim % 2 == 0, "head_dim %d accepted", cfg.head_dim);
  FUZZ_ASSERT(memchr(cfg.arch_name, '\0', sizeof cfg.arch_name) != NULL, "arch_name unterminated");
  FUZZ_ASSERT(isfinite(cfg.rms_eps) && cfg.rms_eps >= 0.0, "rms_eps %g", cfg.rms_eps);
  FUZZ_ASSERT(cfg.rope_dim >= 0 && cfg.rope_dim <= cfg.head_dim && cfg.rope_dim % 2 == 0,
              "rope_dim %d of head_dim %d accepted", cfg.rope_dim, cfg.head_dim);
  FUZZ_ASSERT(cfg.sliding_window >= 0, "sliding_window %d", cfg.sliding_window);
  FUZZ_ASSERT(isfinite(ls_family_gemm_flops_per_token(&cfg)), "gemm flops not finite");

  if (cfg.rope_dim > 65536) return 0;
  const int half = cfg.rope_dim / 2;
  float *inv_freq = malloc((size_t)(half > 0 ? half : 1) * sizeof *inv_freq);
  if (!inv_freq) return 0;
  /* every RoPE parameter set the config gave: finite, positive, finite frequencies */
  for (int k = 0; k < (cfg.local_rope ? 2 : 1) && half > 0; k++) {
    const ls_rope_params_t *r = k ? &cfg.rope_local : &cfg.rope;
    FUZZ_ASSERT(isfinite(r->theta) && r->theta > 0.0, "rope theta %g", r->theta);
    FUZZ_ASSERT(isfinite(r->factor) && r->factor > 0.0, "rope factor %g", r->factor);
    ls_config_rope_inv_freq(r, cfg.rope_dim, inv_freq);
    for (int i = 0; i < half; i++)
      FUZZ_ASSERT(isfinite(inv_freq[i]),
                  "inv_freq[%d] = %g (rope_dim %d, theta %.9g, type %d, factor %.17g, "
                  "low %.17g, high %.17g, orig_max_pos %d)",
                  i, (double)inv_freq[i], cfg.rope_dim, r->theta, (int)r->type, r->factor,
                  r->low_freq_factor, r->high_freq_factor, r->orig_max_pos);
  }
  free(inv_freq);
  return 0;
}
