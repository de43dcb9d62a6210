//! `setters!`: consuming setters for the public options and configuration structs, which are
//! `#[non_exhaustive]` (so that a field added later breaks no user) and so cannot be built
//! with a struct literal outside this crate: `RunnerConfig::default().max_running(8)`.

/// Generates, for each listed field, a `#[must_use]` consuming setter of the same name taking
/// the field's type; for each field listed under `optional` (an `Option<T>` field), one
/// taking a `T` and setting `Some`.
macro_rules! setters {
    ($ty:ty {
        $($field:ident : $t:ty),* $(,)?
    } $(optional {
        $($ofield:ident : $ot:ty),* $(,)?
    })?) => {
        impl $ty {
            $(
                #[doc = concat!("With `", stringify!($field), "` set.")]
                #[must_use]
                pub fn $field(mut self, $field: $t) -> Self {
                    self.$field = $field;
                    self
                }
            )*
            $($(
                #[doc = concat!("With `", stringify!($ofield), "` set.")]
                #[must_use]
                pub fn $ofield(mut self, $ofield: $ot) -> Self {
                    self.$ofield = Some($ofield);
                    self
                }
            )*)?
        }
    };
}
