/* Combining the link posteriors of the two directions of an aligner. */
#ifndef CALIGN_WA_COMBINE_H
#define CALIGN_WA_COMBINE_H

#include <stdint.h>

#include "wordalign/ibm.h"

/* Soft union, the Berkeley Aligner's combination of two directional models
 * (Liang, Taskar & Klein 2006; DeNero & Klein 2007): link (i, j) when
 * (p_f(a_j = i) + p_r(b_i = j)) / 2 > threshold. c is the forward corpus;
 * post_f holds pair k's [J][I + 1] forward posteriors and post_r its
 * [I][J + 1] reverse ones, pair after pair (column 0 NULL). keep: pair k's
 * [I][J] decisions, pair after pair. */
void wa_soft_union(uint8_t *keep, const double *post_f, const double *post_r,
                   const wa_corpus *c, double threshold);

#endif
