//===- KilnDialect.cpp - The kiln dialect ---------------------------------===//
#include "ir/KilnDialect.h"
#include "ir/KilnOps.h"

#include "llvm/ADT/TypeSwitch.h"

#include <charconv>
#include <cmath>

using namespace mlir;
using namespace mlir::kiln;

#include "ir/KilnDialect.cpp.inc"
#include "ir/KilnEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "ir/KilnAttrs.cpp.inc"

void KilnDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/KilnOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "ir/KilnAttrs.cpp.inc"
      >();
}

FailureOr<llvm::APFloat> mlir::kiln::parseF64(AsmParser &parser) {
  double value = 0;
  if (parser.parseFloat(value))
    return failure();
  return llvm::APFloat(value);
}

void mlir::kiln::printF64(AsmPrinter &printer, const llvm::APFloat &apValue) {
  double value = apValue.convertToDouble();
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, ec == std::errc() ? end : buffer);
  if (!std::isfinite(value) || text.find_first_of(".e") == std::string::npos) {
    if (std::isfinite(value))
      text += ".0";
  } else if (text.find('.') == std::string::npos) {
    // "1e-06" lexes as an integer followed by an identifier.
    text.insert(text.find('e'), ".0");
  }
  printer << text;
}

FailureOr<bool> mlir::kiln::parseBool(AsmParser &parser) {
  if (succeeded(parser.parseOptionalKeyword("true")))
    return true;
  if (succeeded(parser.parseOptionalKeyword("false")))
    return false;
  return parser.emitError(parser.getCurrentLocation(),
                          "expected 'true' or 'false'");
}

LogicalResult RopeAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                               RopeKind kind, APFloat apTheta, APFloat apFactor,
                               int64_t originalMaxPosition, APFloat apBetaFast,
                               APFloat apBetaSlow, APFloat mscale,
                               APFloat mscaleAllDim, APFloat apLowFreqFactor,
                               APFloat apHighFreqFactor, bool interleaved) {
  double theta = apTheta.convertToDouble();
  double factor = apFactor.convertToDouble();
  double betaFast = apBetaFast.convertToDouble();
  double betaSlow = apBetaSlow.convertToDouble();
  double lowFreqFactor = apLowFreqFactor.convertToDouble();
  double highFreqFactor = apHighFreqFactor.convertToDouble();
  if (!(theta > 0))
    return emitError() << "rope theta must be positive, got " << theta;
  if (kind == RopeKind::plain)
    return success();
  if (!(factor >= 1))
    return emitError() << "rope scaling factor must be >= 1, got " << factor;
  if (originalMaxPosition <= 0)
    return emitError() << "rope scaling needs original_max_position > 0";
  if (kind == RopeKind::yarn && !(betaFast > betaSlow))
    return emitError() << "yarn needs beta_fast > beta_slow, got " << betaFast
                       << " <= " << betaSlow;
  if (kind == RopeKind::llama3 && !(highFreqFactor > lowFreqFactor))
    return emitError() << "llama3 needs high_freq_factor > low_freq_factor";
  return success();
}

LogicalResult Fp8QuantAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                                   int64_t blockRows, int64_t blockCols, bool,
                                   bool) {
  if (blockRows < 1 || blockCols < 1)
    return emitError() << "fp8_quant needs block_rows and block_cols >= 1";
  return success();
}

LogicalResult
PackedCacheAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                        int64_t fp8Columns) {
  if (fp8Columns < 0)
    return emitError() << "packed_cache needs fp8_columns >= 0";
  return success();
}

int64_t PackedCacheAttr::getRowBytes(int64_t elements) const {
  int64_t codes = getFp8Columns();
  int64_t bytes =
      (codes + 3) / 4 * 4 + 4 * ((codes + 127) / 128) + 2 * (elements - codes);
  return (bytes + 3) / 4 * 4;
}

LogicalResult
HeadSliceAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                      int64_t heads, int64_t rows, int64_t offset, int64_t size,
                      bool transpose) {
  if (heads < 1 || rows < 1 || offset < 0 || size < 1 || offset + size > rows)
    return emitError() << "head_slice needs heads, rows, size >= 1 and "
                          "0 <= offset, offset + size <= rows";
  return success();
}
