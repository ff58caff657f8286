//! sandstorm.json's `webhook_url`, checked when the file is loaded. (Its
//! `triggers` are read by [`crate::triggers::definition`].)

/// Checks `webhook_url`: an absolute http or https URL with a host.
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed)
            if matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some() =>
        {
            Ok(())
        }
        _ => Err("must be an absolute http:// or https:// URL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_must_be_http() {
        assert_eq!(check_webhook_url("https://hooks.example.com/x"), Ok(()));
        assert!(check_webhook_url("hooks.example.com").is_err());
        assert!(check_webhook_url("file:///etc/passwd").is_err());
    }
}
