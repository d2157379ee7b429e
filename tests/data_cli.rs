//! End-to-end tests of `limo data` (filled in by the data work).
