//! The cursor parser against arbitrary text and against edits of cursors the
//! console issued: nothing panics, an accepted cursor is exactly one the key
//! signed for that list, and any edit of an issued cursor is refused.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sofiia_core_domain::{Cursor, CursorKeys, Timestamp};

#[derive(Debug, Arbitrary)]
enum Input {
    /// Text a client sent as `cursor=`.
    Text(String),
    /// A cursor the console issued, then edited by the client.
    Edited {
        millis: i64,
        id: String,
        edits: Vec<(u16, u8)>,
        other_scope: bool,
    },
}

const SCOPE: &str = "messages:chat-1";

fuzz_target!(|input: Input| {
    let keys = CursorKeys::new(["the fuzz target's cursor key, 32 bytes+"]).expect("a long key");
    match input {
        Input::Text(text) => {
            if let Ok(cursor) = keys.decode(&text, SCOPE) {
                // Only a cursor this key signed decodes, and its text is the
                // one encoding of it.
                assert_eq!(keys.encode(&cursor, SCOPE), text);
            }
        }
        Input::Edited {
            millis,
            id,
            edits,
            other_scope,
        } => {
            let Ok(ts) = Timestamp::from_unix_millis(millis) else {
                return;
            };
            if id.is_empty() || id.len() > 255 {
                return;
            }
            let cursor = Cursor::new(ts, id);
            let issued = keys.encode(&cursor, SCOPE);
            assert_eq!(keys.decode(&issued, SCOPE).as_ref(), Ok(&cursor));
            let mut bytes = issued.clone().into_bytes();
            for (at, byte) in edits {
                if !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    bytes[at] = byte;
                }
            }
            let scope = if other_scope { "chats" } else { SCOPE };
            let Ok(edited) = String::from_utf8(bytes) else {
                return;
            };
            if edited != issued || other_scope {
                assert!(
                    keys.decode(&edited, scope).is_err(),
                    "{edited} was accepted for {scope}"
                );
            }
        }
    }
});
