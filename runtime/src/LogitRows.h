// The output head over only the rows whose logits a prefill reads (each
// sequence's last prompt token), on either device: the head's input rows
// are moved to the front of its buffer, the head runs over those, and the
// logits of compact row i belong to the step's row rows[i].
#ifndef KILN_RUNTIME_LOGITROWS_H
#define KILN_RUNTIME_LOGITROWS_H

#include "absl/status/status.h"

#include <cstdint>
#include <span>
#include <string>

namespace kiln {

/// Checks that `rows` (indices into a step's `count` batch x seq rows) are
/// strictly increasing and in range. Moving row rows[i] to row i in
/// increasing i then never overwrites a row still to be moved, and no
/// source overlaps its destination (rows[i] > i, or they are the same).
inline absl::Status checkLogitRows(std::span<const int64_t> rows,
                                   int64_t count) {
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i] < 0 || rows[i] >= count || (i > 0 && rows[i] <= rows[i - 1]))
      return absl::InternalError(
          "logit rows must increase and lie below the step's " +
          std::to_string(count) + " rows; row " + std::to_string(i) + " is " +
          std::to_string(rows[i]));
  return absl::OkStatus();
}

} // namespace kiln

#endif // KILN_RUNTIME_LOGITROWS_H
