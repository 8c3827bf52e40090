#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| parvm_fuzz::hcall::hcall(data));
