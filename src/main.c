/* main.c: the layersweep command line. Thin: parses options, starts MPI (a binary
 * started without mpirun is a one-rank job) and calls the library entry points. */
#include <getopt.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "info.h"
#include "ls_common.h"
#include "make_model.h"
#include "registry.h"
#include "sweep.h"
#include "tokenize.h"

static const char *usage_main =
    "usage: layersweep <command> [options]\n"
    "\n"
    "Extract transformer activations layer by layer: each layer's weights are read once\n"
    "and the whole dataset streams through it.\n"
    "\n"
    "commands:\n"
    "  run          run a sweep: model directory + JSONL prompts -> HDF5 activations\n"
    "  plan         print the plan of a sweep (sharding, memory, output size) and stop\n"
    "  make-model   write a random Llama/Mistral/Qwen2-family model directory\n"
    "  make-data    write a random JSONL dataset of token ids\n"
    "  tokenize     JSONL {\"text\": ...} lines (or a .txt file) -> JSONL with \"input_ids\"\n"
    "               from the model's own tokenizer.json (no weights needed)\n"
    "  info         what an output file holds: status, layers complete, datasets, the\n"
    "               command, the profile (exit 1 for a partial file); --plot FILE.svg\n"
    "               draws the time per layer\n"
    "  backends     list the backends of this build, their capabilities, and whether\n"
    "               each is usable here (and why not)\n"
    "  --version    print the version\n"
    "\n"
    "Run `layersweep <command> --help` for the options of each command.\n";

static const char *usage_run =
    "usage: layersweep run --model DIR|URL|ORG/NAME[@REV] --data FILE --out FILE [options]\n"
    "       mpirun -np P layersweep run ...   (same file as one rank)\n"
    "\n"
    "  --model DIR               Hugging Face model directory (config.json + safetensors,\n"
    "                            single file or sharded with model.safetensors.index.json);\n"
    "                            or an http(s) URL of one (read by range requests, each byte\n"
    "                            once); or a hub id org/name[@revision]: the local Hugging\n"
    "                            Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/\n"
    "                            hub) if it holds the model, else HF_ENDPOINT (default\n"
    "                            https://huggingface.co) with HF_TOKEN (or the HF token file)\n"
    "                            sent to that host only. A local directory wins over a hub id\n"
    "  --data FILE               JSONL, one prompt per line: {\"input_ids\": [..],\n"
    "                            \"label\": int (optional), \"id\": \"str\" (optional)}, or\n"
    "                            {\"text\": \"..\"} lines (not mixed with input_ids lines), or a\n"
    "                            .txt file of one prompt per line: texts are tokenized with\n"
    "                            the model's tokenizer.json (as transformers' AutoTokenizer)\n"
    "  --max-tokens N            cut every prompt to its first N tokens (default: none: a\n"
    "                            prompt longer than the model allows is refused)\n"
    "  --out FILE                HDF5 output file (refused if it exists, see --force)\n"
    "  --hooks LIST              residual_pre,attn_out,mlp_out,residual_post,final_norm or all,\n"
    "                            and router_logits (MoE models; not part of all)\n"
    "                            (default: residual_post)\n"
    "  --layers SPEC             all, or a list such as 0,4,8-11 or -1 (negative counts from\n"
    "                            the end) (default: all)\n"
    "  --pool MODE               last_token, mean or none (raw tokens) (default: last_token)\n"
    "  --microbatch-tokens N     tokens per packed microbatch (default: 4096)\n"
    "  --threads N               CPU threads per rank (default: OMP_NUM_THREADS, else the\n"
    "                            CPUs the rank is bound to, else node CPUs / ranks on it)\n"
    "  --backend B               auto, cpu or cuda (default: auto: cuda when every rank has a\n"
    "                            usable GPU, else cpu; the log says which)\n"
    "  --dtype D                 auto, bf16 or float32: bf16 keeps GEMM weights and GEMM\n"
    "                            inputs in bf16 with float32 accumulation, float32 computes\n"
    "                            everything in float32 (default: auto: bf16 on cuda, float32\n"
    "                            on cpu, which has no bf16 mode)\n"
    "  --preload-weights         read every computed layer into (GPU) memory before the\n"
    "                            layer loop instead of streaming them; for benchmarks and\n"
    "                            models that fit (default: off, weights stream)\n"
    "  --allow-long-prompts      accept prompts longer than max_position_embeddings\n"
    "  --force                   overwrite an existing output file\n"
    "  --progress MODE           auto, lines or off (default: auto: a bar on a terminal)\n"
    "  --out-dtype T             stored activations: float32, float16 (half the file; a value\n"
    "                            beyond 65504 stops the run) or bfloat16 (half the file,\n"
    "                            float32's range; read back as float32) (default: float32)\n"
    "  --steer FILE.json         edits applied inside the forward at a layer's hook point:\n"
    "                            [{\"layer\", \"hook\", \"op\": \"add\"|\"ablate\", \"alpha\",\n"
    "                            \"vector\", \"positions\": \"all\"|\"last\"}] (default: none)\n"
    "  --reduce LIST             statistics of the captured rows, per hook and layer, exact and\n"
    "                            bit-identical for any rank count, in /reductions: mean, cov\n"
    "                            (unbiased covariance), pca:K (top K components), diffmeans\n"
    "                            (class means by \"label\"; label 1 - label 0) (default: none)\n"
    "  --no-store                keep only the --reduce results, not the activations\n"
    "                            (default: off, activations stored)\n"
    "  --project FILE:DATASET    store activations projected on K directions ([K, H], or\n"
    "                            [layers, K, H], e.g. run1.h5:/reductions/residual_post/\n"
    "                            pca_components) instead of H-wide (default: none)\n"
    "  --verify N                recompute N prompts (spread over the data) at every layer on\n"
    "                            the CPU (GEMM sums in double) from the same weights; the\n"
    "                            largest row-wise relative error per layer and hook goes to\n"
    "                            /verify; a warning above tolerance (default: 0, off)\n"
    "  --verify-strict           with --verify: stop the run above tolerance (default: off)\n"
    "  --compress LEVEL          deflate (gzip) level 1-9 for the activation datasets, stored\n"
    "                            in chunks of one layer x about 1 MiB of rows; writes are then\n"
    "                            collective (not overlapped) (default: 0, contiguous, none)\n"
    "  --precise-gemm            CPU: sum each GEMM dot product in double over 128-term float32\n"
    "                            chunks: closer to float64 than float32 GEMMs (within\n"
    "                            transformers' own float32 error on real weights), 30-45%\n"
    "                            more forward time (default: off)\n"
    "  --stall-timeout S         end the job when no rank makes progress for S seconds (a lost\n"
    "                            rank or link), naming the phase and layer; 0 off (default:\n"
    "                            auto: the longer of 10 minutes and 20x the slowest layer)\n"
    "  --overlap-writes on|off   write each layer's rows from a thread while the next layer\n"
    "                            computes (default: on; off halves the host output buffers)\n"
    "  --summary-json FILE       also write the profile summary as JSON (default: none)\n"
    "  --resume                  continue an interrupted sweep from its last checkpoint (a\n"
    "                            complete file is left alone; no checkpoint: start over)\n"
    "  --checkpoint-every N      checkpoint the residual stream every N layers, auto (after\n"
    "                            each minute of work, under 2% of the time) or off\n"
    "                            (default: auto)\n"
    "  --checkpoint-dir DIR      where checkpoints go (default: OUT.ckpt beside the output)\n"
    "  --memory-limit BYTES      host memory one rank may use; a residual stream that does not\n"
    "                            fit beside the other buffers lives in a file in --spill-dir,\n"
    "                            read ahead and written behind per microbatch; suffixes K, M,\n"
    "                            G, T (default: auto: 95% of the memory available at the start,\n"
    "                            shared by the ranks on the node)\n"
    "  --spill-dir DIR           where a spilled residual stream goes, one unlinked file per\n"
    "                            rank: give the fastest local disk (default: OUT.spill beside\n"
    "                            the output)\n"
    "  --assume-ranks N          plan: also predict the time at N ranks (default: the ranks\n"
    "                            of this job)\n"
    "  --http-cache DIR          a remote model's byte ranges are kept here, so that a second\n"
    "                            run reads them from disk; off: no cache (default:\n"
    "                            $XDG_CACHE_HOME/layersweep/http, else ~/.cache/layersweep/http)\n"
    "  --http-cache-max BYTES    bound of that cache, least recently used ranges dropped first;\n"
    "                            suffixes K, M, G, T (powers of 1024) (default: 50G)\n"
    "  --help                    this text\n";

static const char *usage_make_model =
    "usage: layersweep make-model --out DIR [options]\n"
    "\n"
    "  --out DIR             directory to write (created; refused if it holds a model)\n"
    "  --arch A              llama, mistral, qwen2 or mixtral (default: llama)\n"
    "  --hidden N            hidden_size (default: 256)\n"
    "  --intermediate N      intermediate_size (default: 688)\n"
    "  --layers N            num_hidden_layers (default: 4)\n"
    "  --heads N             num_attention_heads (default: 8)\n"
    "  --kv-heads N          num_key_value_heads (default: 4)\n"
    "  --head-dim N          head_dim (default: hidden / heads)\n"
    "  --vocab N             vocab_size (default: 1024)\n"
    "  --max-pos N           max_position_embeddings (default: 4096)\n"
    "  --dtype D             bf16, f16 or f32 (default: bf16)\n"
    "  --shards N            safetensors shards (default: 1; >1 writes an index)\n"
    "  --seed N              random seed (default: 1234)\n"
    "  --rope-theta X        rope_theta (default: 10000)\n"
    "  --init-std X          weight standard deviation (default: 0.02)\n"
    "  --sliding-window N    Mistral sliding_window (default: none)\n"
    "  --experts N           mixtral: experts per layer (default: 8)\n"
    "  --top-k K             mixtral: experts per token (default: 2)\n"
    "  --tie                 tie_word_embeddings (no lm_head tensor)\n"
    "  --force               overwrite an existing model directory\n"
    "  --help                this text\n";

static const char *usage_make_data =
    "usage: layersweep make-data --out FILE [options]\n"
    "\n"
    "  --out FILE        JSONL file to write\n"
    "  --n N             prompts (default: 256)\n"
    "  --min-len N       shortest prompt in tokens (default: 16)\n"
    "  --max-len N       longest prompt in tokens (default: 128)\n"
    "  --vocab N         token ids are drawn from [0, N) (default: 1024)\n"
    "  --seed N          random seed (default: 1)\n"
    "  --no-labels       omit the \"label\" field\n"
    "  --force           overwrite an existing file\n"
    "  --help            this text\n";

/* ---- option parsing helpers ----------------------------------------------------------- */
static int parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) {
    ls_error("%s: expected an integer in [%ld, %ld], got \"%s\"", opt, lo, hi, s);
    return LS_ERR;
  }
  *out = v;
  return LS_OK;
}

static int parse_double(const char *opt, const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (!*s || *end) {
    ls_error("%s: expected a number, got \"%s\"", opt, s);
    return LS_ERR;
  }
  *out = v;
  return LS_OK;
}

static void join_argv(int argc, char **argv, char *buf, size_t cap) {
  size_t o = 0;
  buf[0] = '\0';
  for (int i = 0; i < argc && o + 1 < cap; i++)
    o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? " " : "", argv[i]);
}

/* ---- commands ---------------------------------------------------------------------------- */
enum { O_MODEL = 256, O_DATA, O_OUT, O_HOOKS, O_LAYERS, O_POOL, O_MB, O_THREADS, O_LONG,
       O_FORCE, O_PROGRESS, O_SUMMARY, O_RESUME, O_CKPT_EVERY, O_CKPT_DIR, O_BACKEND, O_DTYPE, O_PRELOAD, O_OVERLAP, O_OUT_DTYPE, O_STALL, O_PRECISE, O_COMPRESS, O_STEER, O_REDUCE, O_NO_STORE, O_PROJECT, O_VERIFY, O_VERIFY_STRICT, O_ASSUME_RANKS, O_HTTP_CACHE, O_HTTP_CACHE_MAX, O_MEMORY_LIMIT, O_SPILL_DIR, O_HELP,
       O_MAX_TOKENS };

static int cmd_run(int argc, char **argv, int plan_only) {
  static const struct option opts[] = {
      {"model", required_argument, 0, O_MODEL},   {"data", required_argument, 0, O_DATA},
      {"out", required_argument, 0, O_OUT},       {"hooks", required_argument, 0, O_HOOKS},
      {"layers", required_argument, 0, O_LAYERS}, {"pool", required_argument, 0, O_POOL},
      {"microbatch-tokens", required_argument, 0, O_MB},
      {"threads", required_argument, 0, O_THREADS},
      {"allow-long-prompts", no_argument, 0, O_LONG}, {"force", no_argument, 0, O_FORCE},
      {"progress", required_argument, 0, O_PROGRESS}, {"help", no_argument, 0, O_HELP},
      {"summary-json", required_argument, 0, O_SUMMARY},
      {"resume", no_argument, 0, O_RESUME},
      {"checkpoint-every", required_argument, 0, O_CKPT_EVERY},
      {"checkpoint-dir", required_argument, 0, O_CKPT_DIR},
      {"backend", required_argument, 0, O_BACKEND},
      {"dtype", required_argument, 0, O_DTYPE},
      {"preload-weights", no_argument, 0, O_PRELOAD},
      {"overlap-writes", required_argument, 0, O_OVERLAP},
      {"out-dtype", required_argument, 0, O_OUT_DTYPE},
      {"compress", required_argument, 0, O_COMPRESS},
      {"steer", required_argument, 0, O_STEER},
      {"reduce", required_argument, 0, O_REDUCE},
      {"no-store", no_argument, 0, O_NO_STORE},
      {"project", required_argument, 0, O_PROJECT},
      {"verify", required_argument, 0, O_VERIFY},
      {"verify-strict", no_argument, 0, O_VERIFY_STRICT},
      {"assume-ranks", required_argument, 0, O_ASSUME_RANKS},
      {"stall-timeout", required_argument, 0, O_STALL},
      {"precise-gemm", no_argument, 0, O_PRECISE},
      {"max-tokens", required_argument, 0, O_MAX_TOKENS},
      {"http-cache", required_argument, 0, O_HTTP_CACHE},
      {"http-cache-max", required_argument, 0, O_HTTP_CACHE_MAX},
      {"memory-limit", required_argument, 0, O_MEMORY_LIMIT},
      {"spill-dir", required_argument, 0, O_SPILL_DIR},
      {0, 0, 0, 0}};
  ls_run_opts_t o;
  ls_run_opts_default(&o);
  o.plan_only = plan_only;
  static char command[8192];
  join_argv(argc + 1, argv - 1, command, sizeof command);
  o.command = command;
  int c, rank;
  long v;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ls_error_set_quiet(rank != 0);
  optind = 1;
  opterr = 0; /* we report bad options ourselves, in one line */
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case O_MODEL: o.model_dir = optarg; break;
      case O_DATA: o.data_path = optarg; break;
      case O_OUT: o.out_path = optarg; break;
      case O_HOOKS: o.hooks = optarg; break;
      case O_LAYERS: o.layers = optarg; break;
      case O_POOL: o.pool = optarg; break;
      case O_MB:
        if (parse_long("--microbatch-tokens", optarg, 1, INT_MAX / 2, &v)) return 2;
        o.microbatch_tokens = v;
        break;
      case O_THREADS:
        if (parse_long("--threads", optarg, 1, 4096, &v)) return 2;
        o.threads = (int)v;
        break;
      case O_LONG: o.allow_long_prompts = 1; break;
      case O_MAX_TOKENS:
        if (parse_long("--max-tokens", optarg, 1, INT_MAX, &v)) return 2;
        o.max_tokens = v;
        break;
      case O_FORCE: o.force = 1; break;
      case O_PROGRESS:
        if (strcmp(optarg, "auto") == 0) o.progress = -1;
        else if (strcmp(optarg, "lines") == 0) o.progress = 1;
        else if (strcmp(optarg, "off") == 0) o.progress = 0;
        else { ls_error("--progress: choose auto, lines or off"); return 2; }
        break;
      case O_SUMMARY: o.summary_json = optarg; break;
      case O_RESUME: o.resume = 1; break;
      case O_BACKEND: o.backend = optarg; break;
      case O_DTYPE: o.dtype = optarg; break;
      case O_PRELOAD: o.preload_weights = 1; break;
      case O_OUT_DTYPE: o.out_dtype = optarg; break;
      case O_STEER: o.steer = optarg; break;
      case O_REDUCE: o.reduce = optarg; break;
      case O_NO_STORE: o.no_store = 1; break;
      case O_PROJECT: o.project = optarg; break;
      case O_VERIFY:
        if (parse_long("--verify", optarg, 0, 1 << 20, &v)) return 2;
        o.verify = (int)v;
        break;
      case O_VERIFY_STRICT: o.verify_strict = 1; break;
      case O_ASSUME_RANKS:
        if (parse_long("--assume-ranks", optarg, 1, 1 << 20, &v)) return 2;
        o.assume_ranks = (int)v;
        break;
      case O_COMPRESS:
        if (parse_long("--compress", optarg, 0, 9, &v)) return 2;
        o.compress = (int)v;
        break;
      case O_PRECISE: o.precise_gemm = 1; break;
      case O_HTTP_CACHE:
        if (!optarg[0]) {
          ls_error("--http-cache: give a directory, or off");
          return 2;
        }
        o.http_cache = optarg;
        break;
      case O_HTTP_CACHE_MAX:
        if (ls_http_parse_size(optarg, &o.http_cache_max)) {
          ls_error("--http-cache-max: expected a byte count such as 50G, 512M or 0 (no "
                   "caching), got \"%s\"", optarg);
          return 2;
        }
        break;
      case O_STALL: {
        char *end = NULL;
        double secs = strcmp(optarg, "auto") == 0 ? -1 : strtod(optarg, &end);
        if (strcmp(optarg, "auto") != 0 && (!end || *end || !(secs >= 0) || secs > 1e7)) {
          ls_error("--stall-timeout: give seconds (0: off) or auto");
          return 2;
        }
        o.stall_timeout = secs;
        break;
      }
      case O_OVERLAP:
        if (strcmp(optarg, "on") == 0) o.overlap_writes = 1;
        else if (strcmp(optarg, "off") == 0) o.overlap_writes = 0;
        else { ls_error("--overlap-writes: choose on or off"); return 2; }
        break;
      case O_CKPT_DIR: o.checkpoint_dir = optarg; break;
      case O_SPILL_DIR: o.spill_dir = optarg; break;
      case O_MEMORY_LIMIT:
        if (strcmp(optarg, "auto") != 0 &&
            (ls_http_parse_size(optarg, &o.memory_limit) || o.memory_limit < ((int64_t)1 << 20))) {
          ls_error("--memory-limit: expected a byte count of at least 1M such as 64G or 512M, "
                   "or auto, got \"%s\"", optarg);
          return 2;
        }
        break;
      case O_CKPT_EVERY:
        if (strcmp(optarg, "auto") == 0) o.checkpoint_every = 0;
        else if (strcmp(optarg, "off") == 0) o.checkpoint_every = -1;
        else if (parse_long("--checkpoint-every", optarg, 1, 1000000, &v)) return 2;
        else o.checkpoint_every = (int)v;
        break;
      case O_HELP:
        if (rank == 0) fputs(usage_run, stdout);
        return 0;
      default:
        ls_error("%s: unknown or incomplete option; see `layersweep %s --help`",
                 argv[optind - 1], plan_only ? "plan" : "run");
        return 2;
    }
  }
  if (optind < argc) {
    ls_error("unexpected argument \"%s\"; see `layersweep %s --help`", argv[optind],
             plan_only ? "plan" : "run");
    return 2;
  }
  if (!o.model_dir || !o.data_path || (!o.out_path && !plan_only)) {
    ls_error("%s needs --model DIR, --data FILE%s; see `layersweep %s --help`",
             plan_only ? "plan" : "run", plan_only ? "" : " and --out FILE",
             plan_only ? "plan" : "run");
    return 2;
  }
  if (!o.out_path) o.out_path = "";
  ls_error_set_quiet(0);
  int rc = ls_sweep_run(&o, MPI_COMM_WORLD);
  return rc == LS_OK ? 0 : rc == LS_STOPPED ? 3 : 1;
}

static int cmd_make_model(int argc, char **argv) {
  enum { M_OUT = 300, M_ARCH, M_HIDDEN, M_INTER, M_LAYERS, M_HEADS, M_KV, M_HD, M_VOCAB, M_MAXPOS,
         M_DTYPE, M_SHARDS, M_SEED, M_THETA, M_STD, M_WINDOW, M_TIE, M_FORCE, M_EXPERTS, M_TOPK,
         M_HELP };
  static const struct option opts[] = {
      {"out", required_argument, 0, M_OUT},        {"arch", required_argument, 0, M_ARCH},
      {"hidden", required_argument, 0, M_HIDDEN},  {"intermediate", required_argument, 0, M_INTER},
      {"layers", required_argument, 0, M_LAYERS},  {"heads", required_argument, 0, M_HEADS},
      {"kv-heads", required_argument, 0, M_KV},    {"head-dim", required_argument, 0, M_HD},
      {"vocab", required_argument, 0, M_VOCAB},    {"max-pos", required_argument, 0, M_MAXPOS},
      {"dtype", required_argument, 0, M_DTYPE},    {"shards", required_argument, 0, M_SHARDS},
      {"seed", required_argument, 0, M_SEED},      {"rope-theta", required_argument, 0, M_THETA},
      {"init-std", required_argument, 0, M_STD},   {"sliding-window", required_argument, 0, M_WINDOW},
      {"tie", no_argument, 0, M_TIE},              {"force", no_argument, 0, M_FORCE},
      {"experts", required_argument, 0, M_EXPERTS}, {"top-k", required_argument, 0, M_TOPK},
      {"help", no_argument, 0, M_HELP},            {0, 0, 0, 0}};
  ls_make_model_opts_t o;
  ls_make_model_default(&o);
  int c;
  long v;
  optind = 1;
  opterr = 0; /* we report bad options ourselves, in one line */
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    int *field = NULL;
    long lo = 1, hi = 1 << 24;
    switch (c) {
      case M_OUT: o.out_dir = optarg; continue;
      case M_ARCH: o.arch = optarg; continue;
      case M_DTYPE: o.dtype = optarg; continue;
      case M_TIE: o.tie_embeddings = 1; continue;
      case M_FORCE: o.force = 1; continue;
      case M_HELP: fputs(usage_make_model, stdout); return 0;
      case M_SEED:
        if (parse_long("--seed", optarg, 0, LONG_MAX, &v)) return 2;
        o.seed = (uint64_t)v;
        continue;
      case M_THETA: if (parse_double("--rope-theta", optarg, &o.rope_theta)) return 2; continue;
      case M_STD: if (parse_double("--init-std", optarg, &o.init_std)) return 2; continue;
      case M_HIDDEN: field = &o.hidden; break;
      case M_INTER: field = &o.intermediate; break;
      case M_LAYERS: field = &o.n_layers; hi = 100000; break;
      case M_HEADS: field = &o.n_heads; hi = 65536; break;
      case M_KV: field = &o.n_kv_heads; hi = 65536; break;
      case M_HD: field = &o.head_dim; hi = 65536; break;
      case M_VOCAB: field = &o.vocab; hi = 1 << 30; break;
      case M_MAXPOS: field = &o.max_pos; hi = INT_MAX; break;
      case M_SHARDS: field = &o.shards; hi = 99999; break;
      case M_WINDOW: field = &o.sliding_window; hi = INT_MAX; break;
      case M_EXPERTS: field = &o.n_experts; hi = 4096; break;
      case M_TOPK: field = &o.top_k; hi = 4096; break;
      default:
        ls_error("%s: unknown or incomplete option; see `layersweep make-model --help`",
                 argv[optind - 1]);
        return 2;
    }
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", opts[c - M_OUT].name);
    if (parse_long(flag, optarg, lo, hi, &v)) return 2;
    *field = (int)v;
  }
  if (optind < argc) {
    ls_error("unexpected argument \"%s\"; see `layersweep make-model --help`", argv[optind]);
    return 2;
  }
  return ls_make_model(&o) == LS_OK ? 0 : 1;
}

static int cmd_make_data(int argc, char **argv) {
  enum { D_OUT = 400, D_N, D_MIN, D_MAX, D_VOCAB, D_SEED, D_NOLABEL, D_FORCE, D_HELP };
  static const struct option opts[] = {
      {"out", required_argument, 0, D_OUT},     {"n", required_argument, 0, D_N},
      {"min-len", required_argument, 0, D_MIN}, {"max-len", required_argument, 0, D_MAX},
      {"vocab", required_argument, 0, D_VOCAB}, {"seed", required_argument, 0, D_SEED},
      {"no-labels", no_argument, 0, D_NOLABEL}, {"force", no_argument, 0, D_FORCE},
      {"help", no_argument, 0, D_HELP},         {0, 0, 0, 0}};
  ls_make_data_opts_t o;
  ls_make_data_default(&o);
  int c;
  long v;
  optind = 1;
  opterr = 0; /* we report bad options ourselves, in one line */
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case D_OUT: o.out_path = optarg; break;
      case D_N: if (parse_long("--n", optarg, 1, LONG_MAX, &v)) return 2; o.n = v; break;
      case D_MIN: if (parse_long("--min-len", optarg, 1, INT_MAX, &v)) return 2; o.min_len = (int)v; break;
      case D_MAX: if (parse_long("--max-len", optarg, 1, INT_MAX, &v)) return 2; o.max_len = (int)v; break;
      case D_VOCAB: if (parse_long("--vocab", optarg, 1, INT_MAX, &v)) return 2; o.vocab = (int)v; break;
      case D_SEED: if (parse_long("--seed", optarg, 0, LONG_MAX, &v)) return 2; o.seed = (uint64_t)v; break;
      case D_NOLABEL: o.labels = 0; break;
      case D_FORCE: o.force = 1; break;
      case D_HELP: fputs(usage_make_data, stdout); return 0;
      default:
        ls_error("%s: unknown or incomplete option; see `layersweep make-data --help`",
                 argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc) {
    ls_error("unexpected argument \"%s\"; see `layersweep make-data --help`", argv[optind]);
    return 2;
  }
  return ls_make_data(&o) == LS_OK ? 0 : 1;
}

static const char *usage_tokenize =
    "usage: layersweep tokenize --model DIR --data FILE --out FILE [options]\n"
    "\n"
    "Tokenize text prompts with the model's own tokenizer (DIR/tokenizer.json, as\n"
    "transformers' AutoTokenizer.from_pretrained(DIR)(text)[\"input_ids\"]: BOS/EOS included).\n"
    "  --model DIR       directory with tokenizer.json (+ tokenizer_config.json); weights\n"
    "                    are not needed (required)\n"
    "  --data FILE       JSONL with a \"text\" string on every line (other fields are kept),\n"
    "                    or a .txt file of one prompt per line (blank lines skipped)\n"
    "                    (required)\n"
    "  --out FILE        JSONL to write: each line with \"input_ids\" added (refused if it\n"
    "                    exists, see --force, or is an input) (required)\n"
    "  --keep-text       keep the \"text\" field (default: off: it is dropped)\n"
    "  --threads N       tokenizer threads (default: the CPUs online)\n"
    "  --force           overwrite an existing --out (default: off)\n"
    "  --help            this text\n";

static int cmd_tokenize(int argc, char **argv) {
  enum { T_MODEL = 500, T_DATA, T_OUT, T_KEEP, T_THREADS, T_FORCE, T_HELP };
  static const struct option opts[] = {
      {"model", required_argument, 0, T_MODEL}, {"data", required_argument, 0, T_DATA},
      {"out", required_argument, 0, T_OUT},     {"keep-text", no_argument, 0, T_KEEP},
      {"threads", required_argument, 0, T_THREADS}, {"force", no_argument, 0, T_FORCE},
      {"help", no_argument, 0, T_HELP},         {0, 0, 0, 0}};
  ls_tokenize_opts_t o = {0};
  int c;
  long v;
  optind = 1;
  opterr = 0; /* we report bad options ourselves, in one line */
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case T_MODEL: o.model_dir = optarg; break;
      case T_DATA: o.data_path = optarg; break;
      case T_OUT: o.out_path = optarg; break;
      case T_KEEP: o.keep_text = 1; break;
      case T_FORCE: o.force = 1; break;
      case T_THREADS: if (parse_long("--threads", optarg, 1, 256, &v)) return 2; o.threads = (int)v; break;
      case T_HELP: fputs(usage_tokenize, stdout); return 0;
      default:
        ls_error("%s: unknown or incomplete option; see `layersweep tokenize --help`",
                 argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc) {
    ls_error("unexpected argument \"%s\"; see `layersweep tokenize --help`", argv[optind]);
    return 2;
  }
  if (!o.model_dir || !o.data_path || !o.out_path) {
    ls_error("tokenize needs --model DIR, --data FILE and --out FILE; see `layersweep tokenize --help`");
    return 2;
  }
  return ls_tokenize_main(&o) == LS_OK ? 0 : 1;
}

/* `layersweep backends`: the registry, probed as --backend NAME would probe it. */
static int cmd_backends(void) {
  static const struct { unsigned bit; const char *name; } caps[] = {
      {LS_BE_DETERMINISTIC, "bit-identical for any rank count / microbatch"},
      {LS_BE_HOST_MEMORY, "host memory"},
      {LS_BE_DEVICE_BCAST, "device weight broadcast"},
      {LS_BE_BF16, "bf16 mode"}};
  for (int i = 0; i < ls_backend_count(); i++) {
    const ls_backend_entry_t *e = ls_backend_at(i);
    char why[1024] = "", list[256] = "";
    int usable = e->probe(1, why, sizeof why) > 0;
    for (size_t k = 0; k < sizeof caps / sizeof caps[0]; k++)
      if (e->caps & caps[k].bit)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "",
                 caps[k].name);
    printf("%-6s %s%s%s  [%s]\n", e->name, usable ? "usable" : "not usable", usable ? "" : ": ",
           why, list);
  }
  const char *plugin = ls_backend_plugin_loaded();
  if (plugin[0]) printf("cuda plugin: %s\n", plugin);
  return 0;
}

static const char *usage_info =
    "usage: layersweep info FILE [--plot FILE.svg] [--force]\n"
    "\n"
    "Print what a layersweep output file holds: status, layers complete, datasets and\n"
    "shapes, the command, the profile summary. Exit status: 0 complete, 1 partial, 2 error.\n"
    "  --plot FILE.svg   also draw the time of each layer by phase (read wait, broadcast\n"
    "                    wait, load, forward, hooks, write wait; max over ranks)\n"
    "  --force           overwrite an existing plot file\n";

static int cmd_info(int argc, char **argv) {
  const char *file = NULL, *plot = NULL;
  int force = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage_info, stdout);
      return 0;
    } else if (strcmp(argv[i], "--plot") == 0 && i + 1 < argc) {
      plot = argv[++i];
    } else if (strcmp(argv[i], "--force") == 0) {
      force = 1;
    } else if (argv[i][0] == '-' || file) {
      ls_error("%s: unknown or incomplete option; see `layersweep info --help`", argv[i]);
      return 2;
    } else {
      file = argv[i];
    }
  }
  if (!file) {
    ls_error("info needs the output file; see `layersweep info --help`");
    return 2;
  }
  return ls_info_main(file, plot, force);
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage_main, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("layersweep %s\n", LS_VERSION);
    return 0;
  }
  const char *cmd = argv[1];
  /* a backend may restart the process with a better environment (OpenBLAS's kernels) */
  if (strcmp(cmd, "run") == 0 || strcmp(cmd, "plan") == 0) ls_backends_preinit(argv);
  if (strcmp(cmd, "make-model") == 0) return cmd_make_model(argc - 1, argv + 1);
  if (strcmp(cmd, "make-data") == 0) return cmd_make_data(argc - 1, argv + 1);
  if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc - 1, argv + 1);
  if (strcmp(cmd, "backends") == 0) return cmd_backends();
  if (strcmp(cmd, "info") == 0) return cmd_info(argc - 1, argv + 1);
  if (strcmp(cmd, "run") != 0 && strcmp(cmd, "plan") != 0) {
    fprintf(stderr, "layersweep: error: unknown command \"%s\"; run `layersweep --help`\n", cmd);
    return 2;
  }
  int provided;
  /* MPI_THREAD_MULTIPLE where the library has it: the stall watchdog's thread exchanges
   * heartbeats on its own communicator (src/watchdog.h); everything else is funneled */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  if (provided < MPI_THREAD_FUNNELED) {
    fprintf(stderr, "layersweep: error: the MPI library does not provide MPI_THREAD_FUNNELED\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int rc = cmd_run(argc - 1, argv + 1, strcmp(cmd, "plan") == 0);
  /* a failure on one rank is a failure of the job: agree on the exit status */
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
