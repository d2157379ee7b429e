//! Datasets, chat template, tokenization and batching for limo.
