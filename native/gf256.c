/*
 * coopfs_gf256: GF(2^8) matrix × buffers multiplication for Reed-Solomon coding.
 *
 *   out[i] = XOR_j coef[i * inCount + j] * in[j]      (byte-wise, polynomial 0x11d)
 *
 * Multiplying a byte x by a constant c is linear over GF(2), so
 * c*x = c*(x & 0x0f) ^ c*(x & 0xf0): two 16-entry "split" tables per constant,
 * which fit one SIMD register each and are looked up 16 (PSHUFB) or 32 (VPSHUFB)
 * bytes at a time. The SIMD kernels are compiled with function target attributes
 * and picked at run time, so the addon builds without -mavx2 and still runs on
 * CPUs that lack it; bytes past the last full vector go through a scalar
 * 64 KiB product table.
 *
 * Exports:
 *   mul(coefs, inputs, outputs)               synchronous
 *   mulAsync(coefs, inputs, outputs, cb)      on the libuv thread pool, cb(err)
 *   simd                                      "avx2" | "ssse3" | "scalar"
 *
 * COOPFS_GF256_SIMD=scalar|ssse3 caps the kernel chosen at load time, so tests
 * can cross-check the kernels this CPU would otherwise never run.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define GF_X86 1
#include <immintrin.h>
#endif

#define GF_POLY 0x11d
/* k + m <= 255 for a GF(256) code, so neither side of the matrix can exceed it. */
#define MAX_COUNT 255
/* Rows computed together share each input load; 4 accumulators plus temporaries
 * fit in the 16 vector registers of SSSE3/AVX2. */
#define MAX_GROUP 4
/* When there are more than MAX_GROUP outputs the inputs are read once per group:
 * walk the buffers in chunks whose inputs (about this many bytes) stay in L2. */
#define CHUNK_INPUT_BYTES (256 * 1024)
#define MIN_CHUNK 1024
/* Chunk lengths are multiples of this, so only the last chunk has a scalar tail. */
#define CHUNK_ALIGN 64

/* gf_mul_table[c][x] = c * x; split tables: 32 bytes of c*(low nibble) then 32
 * bytes of c*(high nibble << 4), each 16-byte table stored twice so that an
 * aligned 32-byte load gives both AVX2 lanes their copy. */
static uint8_t gf_mul_table[256][256];
static uint8_t gf_split[256][64] __attribute__((aligned(32)));

typedef enum { SIMD_SCALAR = 0, SIMD_SSSE3 = 1, SIMD_AVX2 = 2 } simd_level;
static const char *const simd_names[] = {"scalar", "ssse3", "avx2"};
static simd_level simd = SIMD_SCALAR;

/*
 * Rows [0, rows) of a group over bytes [start, end). tabs[r * in_count + j]
 * points at the split table of the coefficient of output r, input j.
 */
typedef void (*simd_kernel)(const uint8_t *const *tabs, size_t in_count, const uint8_t *const *in,
                            size_t rows, uint8_t *const *out, size_t start, size_t end);

/* Runs once at dlopen, before any thread can use the tables (also shared by
 * worker_threads that load the addon again). */
__attribute__((constructor)) static void gf_init(void) {
  uint8_t exp[512];
  int log[256];
  int x = 1;
  for (int i = 0; i < 255; i++) {
    exp[i] = (uint8_t)x;
    exp[i + 255] = (uint8_t)x;
    log[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= GF_POLY;
  }
  for (int a = 0; a < 256; a++) {
    for (int b = 0; b < 256; b++) {
      gf_mul_table[a][b] = (a == 0 || b == 0) ? 0 : exp[log[a] + log[b]];
    }
  }
  for (int c = 0; c < 256; c++) {
    for (int n = 0; n < 16; n++) {
      gf_split[c][n] = gf_split[c][n + 16] = gf_mul_table[c][n];
      gf_split[c][n + 32] = gf_split[c][n + 48] = gf_mul_table[c][n << 4];
    }
  }

#ifdef GF_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) {
    simd = SIMD_AVX2;
  } else if (__builtin_cpu_supports("ssse3")) {
    simd = SIMD_SSSE3;
  }
#endif
  const char *cap = getenv("COOPFS_GF256_SIMD");
  if (cap != NULL) {
    if (strcmp(cap, "scalar") == 0) {
      simd = SIMD_SCALAR;
    } else if (strcmp(cap, "ssse3") == 0 && simd > SIMD_SSSE3) {
      simd = SIMD_SSSE3;
    }
  }
}

static void rows_scalar(const uint8_t *coefs, size_t in_count, const uint8_t *const *in, size_t rows,
                        uint8_t *const *out, size_t start, size_t end) {
  for (size_t r = 0; r < rows; r++) {
    uint8_t *o = out[r];
    const uint8_t *t = gf_mul_table[coefs[r * in_count]];
    const uint8_t *src = in[0];
    for (size_t p = start; p < end; p++) o[p] = t[src[p]];
    for (size_t j = 1; j < in_count; j++) {
      t = gf_mul_table[coefs[r * in_count + j]];
      src = in[j];
      for (size_t p = start; p < end; p++) o[p] ^= t[src[p]];
    }
  }
}

#ifdef GF_X86
/*
 * The kernels are written once with the row count as a parameter and inlined
 * with constant 1..MAX_GROUP, so the compiler unrolls the row loop and keeps
 * the accumulators in registers.
 */
__attribute__((target("ssse3"), always_inline)) static inline void
ssse3_rows(const uint8_t *const *tabs, size_t in_count, const uint8_t *const *in, const size_t rows,
           uint8_t *const *out, size_t start, size_t end) {
  const __m128i mask = _mm_set1_epi8(0x0f);
  for (size_t p = start; p < end; p += 16) {
    __m128i acc[MAX_GROUP];
    for (size_t r = 0; r < rows; r++) acc[r] = _mm_setzero_si128();
    for (size_t j = 0; j < in_count; j++) {
      const __m128i x = _mm_loadu_si128((const __m128i *)(in[j] + p));
      const __m128i lo = _mm_and_si128(x, mask);
      const __m128i hi = _mm_and_si128(_mm_srli_epi64(x, 4), mask);
      for (size_t r = 0; r < rows; r++) {
        const uint8_t *t = tabs[r * in_count + j];
        const __m128i pl = _mm_shuffle_epi8(_mm_load_si128((const __m128i *)t), lo);
        const __m128i ph = _mm_shuffle_epi8(_mm_load_si128((const __m128i *)(t + 32)), hi);
        acc[r] = _mm_xor_si128(acc[r], _mm_xor_si128(pl, ph));
      }
    }
    for (size_t r = 0; r < rows; r++) _mm_storeu_si128((__m128i *)(out[r] + p), acc[r]);
  }
}

__attribute__((target("ssse3"))) static void kernel_ssse3(const uint8_t *const *tabs, size_t in_count,
                                                          const uint8_t *const *in, size_t rows,
                                                          uint8_t *const *out, size_t start, size_t end) {
  switch (rows) {
    case 1: ssse3_rows(tabs, in_count, in, 1, out, start, end); break;
    case 2: ssse3_rows(tabs, in_count, in, 2, out, start, end); break;
    case 3: ssse3_rows(tabs, in_count, in, 3, out, start, end); break;
    default: ssse3_rows(tabs, in_count, in, 4, out, start, end); break;
  }
}

__attribute__((target("avx2"), always_inline)) static inline void
avx2_rows(const uint8_t *const *tabs, size_t in_count, const uint8_t *const *in, const size_t rows,
          uint8_t *const *out, size_t start, size_t end) {
  const __m256i mask = _mm256_set1_epi8(0x0f);
  for (size_t p = start; p < end; p += 32) {
    __m256i acc[MAX_GROUP];
    for (size_t r = 0; r < rows; r++) acc[r] = _mm256_setzero_si256();
    for (size_t j = 0; j < in_count; j++) {
      const __m256i x = _mm256_loadu_si256((const __m256i *)(in[j] + p));
      const __m256i lo = _mm256_and_si256(x, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi64(x, 4), mask);
      for (size_t r = 0; r < rows; r++) {
        const uint8_t *t = tabs[r * in_count + j];
        const __m256i pl = _mm256_shuffle_epi8(_mm256_load_si256((const __m256i *)t), lo);
        const __m256i ph = _mm256_shuffle_epi8(_mm256_load_si256((const __m256i *)(t + 32)), hi);
        acc[r] = _mm256_xor_si256(acc[r], _mm256_xor_si256(pl, ph));
      }
    }
    for (size_t r = 0; r < rows; r++) _mm256_storeu_si256((__m256i *)(out[r] + p), acc[r]);
  }
}

__attribute__((target("avx2"))) static void kernel_avx2(const uint8_t *const *tabs, size_t in_count,
                                                        const uint8_t *const *in, size_t rows,
                                                        uint8_t *const *out, size_t start, size_t end) {
  switch (rows) {
    case 1: avx2_rows(tabs, in_count, in, 1, out, start, end); break;
    case 2: avx2_rows(tabs, in_count, in, 2, out, start, end); break;
    case 3: avx2_rows(tabs, in_count, in, 3, out, start, end); break;
    default: avx2_rows(tabs, in_count, in, 4, out, start, end); break;
  }
}
#endif

/* One multiplication, with everything copied out of JS values so that it can
 * run off the main thread. Allocated as a single block (see job_alloc). */
typedef struct {
  size_t in_count;
  size_t out_count;
  size_t len;
  uint8_t *coefs;             /* out_count * in_count */
  const uint8_t **in;         /* in_count */
  uint8_t **out;              /* out_count */
  const uint8_t **tabs;       /* out_count * in_count split tables */
  /* mulAsync only */
  napi_async_work work;
  napi_ref buffers;           /* array holding every input and output buffer */
  napi_ref callback;
} gf_job;

static void job_run(const gf_job *job) {
  const size_t in_count = job->in_count;
  const size_t len = job->len;
  simd_kernel kernel = NULL;
  size_t width = 1;
#ifdef GF_X86
  if (simd == SIMD_AVX2) {
    kernel = kernel_avx2;
    width = 32;
  } else if (simd == SIMD_SSSE3) {
    kernel = kernel_ssse3;
    width = 16;
  }
#endif
  size_t chunk = len;
  if (job->out_count > MAX_GROUP) {
    chunk = CHUNK_INPUT_BYTES / in_count / CHUNK_ALIGN * CHUNK_ALIGN;
    if (chunk < MIN_CHUNK) chunk = MIN_CHUNK;
  }
  for (size_t start = 0; start < len; start += chunk) {
    const size_t end = len - start < chunk ? len : start + chunk;
    const size_t simd_end = kernel ? start + (end - start) / width * width : start;
    for (size_t r = 0; r < job->out_count; r += MAX_GROUP) {
      const size_t rows = job->out_count - r < MAX_GROUP ? job->out_count - r : MAX_GROUP;
      if (simd_end > start) {
        kernel(job->tabs + r * in_count, in_count, job->in, rows, job->out + r, start, simd_end);
      }
      if (end > simd_end) {
        rows_scalar(job->coefs + r * in_count, in_count, job->in, rows, job->out + r, simd_end, end);
      }
    }
  }
}

static gf_job *job_alloc(size_t in_count, size_t out_count) {
  const size_t cells = in_count * out_count;
  /* Pointer arrays first so they stay aligned; the coefficient bytes last. */
  const size_t size = sizeof(gf_job) + (in_count + out_count + cells) * sizeof(void *) + cells;
  gf_job *job = calloc(1, size);
  if (job == NULL) return NULL;
  void **ptrs = (void **)(job + 1);
  job->in = (const uint8_t **)ptrs;
  job->out = (uint8_t **)(ptrs + in_count);
  job->tabs = (const uint8_t **)(ptrs + in_count + out_count);
  job->coefs = (uint8_t *)(ptrs + in_count + out_count + cells);
  job->in_count = in_count;
  job->out_count = out_count;
  return job;
}

#define NAPI_CALL(env, call)                                           \
  do {                                                                 \
    if ((call) != napi_ok) {                                           \
      throw_last_error(env);                                           \
      return NULL;                                                     \
    }                                                                  \
  } while (0)

static void throw_last_error(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "N-API call failed");
}

static void *throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static void *throw_value(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", msg);
  return NULL;
}

/* Data pointer and length of a Uint8Array (Buffer included), or false. */
static bool get_bytes(napi_env env, napi_value value, uint8_t **data, size_t *len) {
  bool is_typed = false;
  if (napi_is_typedarray(env, value, &is_typed) != napi_ok || !is_typed) return false;
  napi_typedarray_type type;
  void *ptr = NULL;
  if (napi_get_typedarray_info(env, value, &type, len, &ptr, NULL, NULL) != napi_ok) return false;
  if (type != napi_uint8_array) return false;
  *data = ptr;
  return true;
}

static bool overlaps(const uint8_t *a, const uint8_t *b, size_t len) {
  return len > 0 && a < b + len && b < a + len;
}

/* Reads an array argument's length, checking it is an Array of 1..MAX_COUNT. */
static bool get_count(napi_env env, napi_value value, uint32_t *count) {
  bool is_array = false;
  if (napi_is_array(env, value, &is_array) != napi_ok || !is_array) return false;
  return napi_get_array_length(env, value, count) == napi_ok;
}

/*
 * Validates (coefs, inputs, outputs) and copies them into a new job; throws a
 * TypeError and returns NULL on bad arguments. If holder is not NULL the input
 * and output buffers are also stored in it, to be kept alive for mulAsync.
 */
static gf_job *parse_args(napi_env env, napi_value *argv, napi_value holder) {
  uint8_t *coefs = NULL;
  size_t coef_len = 0;
  uint32_t in_count = 0;
  uint32_t out_count = 0;
  if (!get_bytes(env, argv[0], &coefs, &coef_len)) {
    return throw_type(env, "coefs must be a Uint8Array");
  }
  if (!get_count(env, argv[1], &in_count)) return throw_type(env, "inputs must be an array of Buffers");
  if (!get_count(env, argv[2], &out_count)) return throw_type(env, "outputs must be an array of Buffers");
  if (in_count < 1 || in_count > MAX_COUNT) return throw_value(env, "inputs must hold 1 to 255 buffers");
  if (out_count < 1 || out_count > MAX_COUNT) return throw_value(env, "outputs must hold 1 to 255 buffers");
  if (coef_len != (size_t)in_count * out_count) {
    return throw_value(env, "coefs.length must equal inputs.length * outputs.length");
  }

  gf_job *job = job_alloc(in_count, out_count);
  if (job == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  memcpy(job->coefs, coefs, coef_len);
  for (size_t c = 0; c < coef_len; c++) job->tabs[c] = gf_split[job->coefs[c]];

  const char *error = NULL;
  bool type_error = false;
  for (uint32_t i = 0; i < in_count + out_count && error == NULL; i++) {
    const bool is_in = i < in_count;
    napi_value buf;
    uint8_t *data = NULL;
    size_t len = 0;
    if (napi_get_element(env, argv[is_in ? 1 : 2], is_in ? i : i - in_count, &buf) != napi_ok) {
      error = "could not read a buffer from the arrays";
    } else if (!get_bytes(env, buf, &data, &len)) {
      error = is_in ? "every input must be a Buffer or Uint8Array" : "every output must be a Buffer or Uint8Array";
      type_error = true;
    } else if (i > 0 && len != job->len) {
      error = "all inputs and outputs must have the same length";
    } else if (holder != NULL && napi_set_element(env, holder, i, buf) != napi_ok) {
      error = "could not hold a reference to a buffer";
    } else {
      job->len = len;
      if (is_in) {
        job->in[i] = data;
      } else {
        job->out[i - in_count] = data;
      }
    }
  }
  /* Outputs are written while inputs are still being read, and several rows at
   * a time: any overlap would corrupt the result silently. */
  for (uint32_t o = 0; o < out_count && error == NULL; o++) {
    for (uint32_t i = 0; i < in_count && error == NULL; i++) {
      if (overlaps(job->out[o], job->in[i], job->len)) error = "an output overlaps an input";
    }
    for (uint32_t p = o + 1; p < out_count && error == NULL; p++) {
      if (overlaps(job->out[o], job->out[p], job->len)) error = "two outputs overlap";
    }
  }
  if (error != NULL) {
    free(job);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) {
      if (type_error) {
        throw_type(env, error);
      } else {
        throw_value(env, error);
      }
    }
    return NULL;
  }
  return job;
}

static napi_value js_mul(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) return throw_type(env, "mul(coefs, inputs, outputs) takes 3 arguments");
  gf_job *job = parse_args(env, argv, NULL);
  if (job == NULL) return NULL;
  job_run(job);
  free(job);
  return NULL;
}

static void async_execute(napi_env env, void *data) {
  (void)env;
  job_run(data);
}

static void async_complete(napi_env env, napi_status status, void *data) {
  gf_job *job = data;
  napi_value callback, global, argv[1];
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  if (status == napi_ok) {
    napi_get_null(env, &argv[0]);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, "mulAsync did not complete", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &argv[0]);
  }
  napi_delete_reference(env, job->buffers);
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  free(job);
  napi_call_function(env, global, callback, 1, argv, NULL);
}

static napi_value js_mul_async(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return throw_type(env, "mulAsync(coefs, inputs, outputs, callback) takes 4 arguments");
  napi_valuetype cb_type;
  NAPI_CALL(env, napi_typeof(env, argv[3], &cb_type));
  if (cb_type != napi_function) return throw_type(env, "callback must be a function");

  napi_value holder;
  NAPI_CALL(env, napi_create_array(env, &holder));
  gf_job *job = parse_args(env, argv, holder);
  if (job == NULL) return NULL;

  napi_value name;
  if (napi_create_reference(env, holder, 1, &job->buffers) != napi_ok ||
      napi_create_reference(env, argv[3], 1, &job->callback) != napi_ok ||
      napi_create_string_utf8(env, "coopfs_gf256.mulAsync", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, async_execute, async_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    throw_last_error(env);
    if (job->work != NULL) napi_delete_async_work(env, job->work);
    if (job->buffers != NULL) napi_delete_reference(env, job->buffers);
    if (job->callback != NULL) napi_delete_reference(env, job->callback);
    free(job);
  }
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value fn, name;
  NAPI_CALL(env, napi_create_function(env, "mul", NAPI_AUTO_LENGTH, js_mul, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "mul", fn));
  NAPI_CALL(env, napi_create_function(env, "mulAsync", NAPI_AUTO_LENGTH, js_mul_async, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "mulAsync", fn));
  NAPI_CALL(env, napi_create_string_utf8(env, simd_names[simd], NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_set_named_property(env, exports, "simd", name));
  return exports;
}
