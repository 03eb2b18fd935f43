#![no_main]
// The body, and what it checks, is `marina_fuzz_targets::coord_log_segment` (tests/fuzz-targets).
libfuzzer_sys::fuzz_target!(|data: &[u8]| marina_fuzz_targets::coord_log_segment(data));
