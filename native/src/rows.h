/* Vectorised scans of one logits row (rows.c).  Self-contained, so the
 * tests can build rows.c alone and check it against numpy. */
#ifndef HEARTH_ROWS_H
#define HEARTH_ROWS_H

#include <stdint.h>

/* The largest value; NaN is ignored, so an all-NaN row gives -INFINITY. */
float hearth_row_max(const float *x, int32_t n);
/* The lowest index of the largest value, skipping the entries whose ban
 * byte is 1 (ban may be NULL); -1 when every one is NaN or banned. */
int32_t hearth_row_argmax(const float *x, int32_t n, const uint8_t *ban);

#endif
