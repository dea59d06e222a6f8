//! Stored states read back as types: the one place where the text of a job's state, a
//! stage's name or a stage's state becomes a type again. A value deploybot never writes is an
//! error naming its column (`jobs.state`), never a default.

use rusqlite::types::Type;
use rusqlite::Row;

use super::{StoreError, UnexpectedValue};
use crate::domain::{JobState, StageName, StageState};

/// A state type with one text form per value.
pub(super) trait StoredText: Sized + Copy + 'static {
    const ALL: &'static [Self];
    fn text(self) -> &'static str;
}

macro_rules! stored_text {
    ($($name:ident),+) => {
        $(impl StoredText for $name {
            const ALL: &'static [Self] = $name::ALL;
            fn text(self) -> &'static str {
                self.as_str()
            }
        })+
    };
}

stored_text!(JobState, StageName, StageState);

/// Reads column `index` (named `column` in errors) as a `T`.
pub(super) fn read<T: StoredText>(
    row: &Row<'_>,
    index: usize,
    column: &'static str,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    T::ALL
        .iter()
        .copied()
        .find(|value| value.text() == text)
        .ok_or_else(|| {
            let expected: Vec<&str> = T::ALL.iter().map(|v| v.text()).collect();
            let error = StoreError::Column {
                column,
                source: UnexpectedValue::new(text, &expected),
            };
            rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error))
        })
}

/// The column error inside a row-mapping error, if that is what it carries: callers get
/// `StoreError::Column` naming the column, not a conversion error by index.
pub(super) fn column_error(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::FromSqlConversionFailure(index, kind, inner) => {
            match inner.downcast::<StoreError>() {
                Ok(column) => *column,
                Err(other) => StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
                    index, kind, other,
                )),
            }
        }
        other => StoreError::Sqlite(other),
    }
}
