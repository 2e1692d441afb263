//! Keyset pagination shared by every list: `first` (1 to the configured maximum) rows after an
//! opaque cursor.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::{AppError, Problem};

/// The default page when `first` is not given.
pub const DEFAULT_PAGE: u64 = 20;

/// One page of rows, and whether more follow.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_next: bool,
}

/// A validated page request: how many rows, and the key to start after.
pub struct PageRequest {
    pub first: u64,
    pub after: Option<String>,
}

impl PageRequest {
    pub fn new(first: Option<i32>, after: Option<String>, max: u64) -> Result<Self, AppError> {
        let first = match first {
            None => DEFAULT_PAGE.min(max),
            Some(n) if n >= 1 && (n as u64) <= max => n as u64,
            Some(n) => {
                return Err(AppError::BadUserInput {
                    message: format!("`first` must be between 1 and {max}; got {n}"),
                    problems: vec![Problem::new("first", format!("between 1 and {max}"))],
                });
            }
        };
        let after = after.map(|cursor| decode_cursor(&cursor)).transpose()?;
        Ok(Self { first, after })
    }

    /// Trims the one extra row fetched to learn whether another page follows.
    pub fn page<T>(&self, mut rows: Vec<T>) -> Page<T> {
        let has_next = rows.len() as u64 > self.first;
        rows.truncate(self.first as usize);
        Page { items: rows, has_next }
    }
}

pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(cursor: &str) -> Result<String, AppError> {
    URL_SAFE_NO_PAD.decode(cursor).ok().and_then(|bytes| String::from_utf8(bytes).ok()).ok_or_else(|| {
        AppError::BadUserInput {
            message: "`after` is not a cursor this API returned".into(),
            problems: vec![Problem::new("after", "unknown cursor")],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_outside_one_to_max_are_refused() {
        assert!(PageRequest::new(Some(0), None, 100).is_err());
        assert!(PageRequest::new(Some(101), None, 100).is_err());
        assert_eq!(PageRequest::new(None, None, 100).unwrap().first, 20);
        assert!(PageRequest::new(Some(5), Some("%%%".into()), 100).is_err());
        let cursor = encode_cursor("user_b");
        assert_eq!(PageRequest::new(Some(5), Some(cursor), 100).unwrap().after.as_deref(), Some("user_b"));
    }
}
