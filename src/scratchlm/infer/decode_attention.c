/* Decode attention for the serving engine's KV cache (infer/kv.py), float32 on the CPU.

   One new query per row attends over that row's cached keys and values, as
   softmax(q k^T / sqrt(d)) v. PyTorch's scaled_dot_product_attention does this as a small
   matrix product per (row, head) plus a mask padding every row to the longest; at 32 rows of
   ~100 tokens that overhead makes it read the cache at ~7 GB/s. Here each row's cache is read
   once, front to back (all heads of a position are adjacent in the cache), and only up to
   that row's own length.

   q:       (rows, heads, d), row r's head h at q + r * q_row + h * q_head
   out:     (rows, heads, d) contiguous
   k, v:    (slots, capacity, kv_heads, d) contiguous, one layer of the cache
   slots:   the cache slot of each row; lengths: how many positions that row sees
   Query head h reads key/value head h / (heads / kv_heads) (grouped-query attention).
   Returns 0, or -1 when scratch memory cannot be had (the caller falls back). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int decode_attention(const float *q, int64_t q_row, int64_t q_head, const float *k,
                     const float *v, float *out, const int64_t *slots, const int64_t *lengths,
                     int64_t rows, int64_t heads, int64_t kv_heads, int64_t d,
                     int64_t capacity, float scale) {
    int64_t group = heads / kv_heads, longest = 0;
    for (int64_t r = 0; r < rows; r++)
        longest = lengths[r] > longest ? lengths[r] : longest;
    float *scores = malloc(sizeof(float) * (size_t)(heads * (longest > 0 ? longest : 1)));
    if (scores == NULL)
        return -1;
    for (int64_t r = 0; r < rows; r++) {
        int64_t n = lengths[r], stride = kv_heads * d;
        const float *kr = k + slots[r] * capacity * stride, *vr = v + slots[r] * capacity * stride;
        const float *qr = q + r * q_row;
        float *outr = out + r * heads * d;
        for (int64_t s = 0; s < n; s++) { /* scores: every head's q . k at position s */
            const float *ks = kr + s * stride;
            for (int64_t h = 0; h < heads; h++) {
                const float *kh = ks + (h / group) * d, *qh = qr + h * q_head;
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t i = 0; i < d; i++)
                    acc += qh[i] * kh[i];
                scores[h * n + s] = acc * scale;
            }
        }
        for (int64_t h = 0; h < heads; h++) { /* softmax over the row's positions */
            float *sc = scores + h * n, top = -INFINITY, sum = 0.f;
            for (int64_t s = 0; s < n; s++)
                top = sc[s] > top ? sc[s] : top;
            for (int64_t s = 0; s < n; s++) {
                sc[s] = expf(sc[s] - top);
                sum += sc[s];
            }
            float inv = 1.f / sum;
            for (int64_t s = 0; s < n; s++)
                sc[s] *= inv;
            for (int64_t i = 0; i < d; i++)
                outr[h * d + i] = 0.f;
        }
        for (int64_t s = 0; s < n; s++) { /* out: the weighted sum of the values */
            const float *vs = vr + s * stride;
            for (int64_t h = 0; h < heads; h++) {
                const float *vh = vs + (h / group) * d;
                float p = scores[h * n + s], *o = outr + h * d;
#pragma omp simd
                for (int64_t i = 0; i < d; i++)
                    o[i] += p * vh[i];
            }
        }
    }
    free(scores);
    return 0;
}
