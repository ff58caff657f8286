//! Request parsing and validation on arbitrary bytes: must never panic, and
//! whatever it accepts must hold the documented limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandstorm::doors::PROVIDERS;
use sandstorm::request::{MAX_FILES, MAX_FILES_BYTES, Query, normalize_path};

fuzz_target!(|data: &[u8]| {
    // Every door provider's credential field, as `ds serve` accepts them.
    let credentials: Vec<_> = PROVIDERS.iter().filter_map(|p| p.credential).collect();
    if let Ok(query) = Query::from_json(data, &credentials) {
        assert!(!query.prompt.is_empty());
        assert!(query.files.len() <= MAX_FILES);
        assert!(query.files.iter().map(|f| f.content.len()).sum::<usize>() <= MAX_FILES_BYTES);
        for file in &query.files {
            assert!(!file.path.starts_with('/'));
            assert!(!file.path.split('/').any(|p| p == ".." || p == "." || p.is_empty()));
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(path) = normalize_path(text)
    {
        assert!(!path.starts_with('/') && !path.contains('\0'));
        assert!(!path.split('/').any(|p| p == ".." || p == "." || p.is_empty()));
        // Normalizing is idempotent.
        assert_eq!(normalize_path(&path).as_deref(), Ok(path.as_str()));
    }
});
