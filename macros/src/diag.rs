//! Error accumulation: every stage of the macro reports all the problems it
//! finds in one go instead of stopping at the first one.

use std::fmt::Display;

use proc_macro2::Span;
use quote::ToTokens;

/// A growing list of [`syn::Error`]s, combined with [`syn::Error::combine`].
#[derive(Debug, Default)]
pub struct Errors {
    /// All messages so far, or `None` while there are none.
    combined: Option<syn::Error>,
}

impl Errors {
    /// Starts an empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `error` (which may itself hold several messages).
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Adds every message of `error`, if any.
    pub fn extend(&mut self, error: Option<syn::Error>) {
        if let Some(error) = error {
            self.push(error);
        }
    }

    /// Adds a message pointing at `span`.
    pub fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Adds a message pointing at all of `tokens` (first to last token).
    pub fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Whether no error was added.
    pub fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// The combined error, if any message was added.
    pub fn into_error(self) -> Option<syn::Error> {
        self.combined
    }

    /// `Ok(value)` when no error was added, else every message as one error.
    pub fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.combined {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_list_finishes_ok() {
        let errors = Errors::new();
        assert!(errors.is_empty());
        assert_eq!(errors.finish(7).ok(), Some(7));
    }

    #[test]
    fn messages_are_combined_in_order() {
        let mut errors = Errors::new();
        errors.at(Span::call_site(), "first");
        errors.spanned(quote::quote!(a b), "second");
        errors.extend(Some(syn::Error::new(Span::call_site(), "third")));
        errors.extend(None);
        let error = errors
            .finish(())
            .err()
            .map(|e| e.into_iter().map(|m| m.to_string()).collect::<Vec<_>>());
        assert_eq!(
            error,
            Some(vec!["first".into(), "second".into(), "third".into()])
        );
    }
}
