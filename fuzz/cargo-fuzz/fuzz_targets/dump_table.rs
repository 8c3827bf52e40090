#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| parvm_fuzz::dump_table::dump_table(data));
