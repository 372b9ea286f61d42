//! Unit tests of the comparison core, one file per stage.

mod diff_tests;
mod join_tests;
mod log_tests;
mod pairer_tests;
mod report_tests;
