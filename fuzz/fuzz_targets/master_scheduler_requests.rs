#![no_main]
// The body, and what it checks, is `marina_fuzz_targets::master_scheduler_requests` (tests/fuzz-targets).
libfuzzer_sys::fuzz_target!(|data: &[u8]| marina_fuzz_targets::master_scheduler_requests(data));
