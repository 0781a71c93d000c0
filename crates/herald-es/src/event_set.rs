//! An aggregate's (or a saga's) events as one Rust enum of Herald events.
//!
//! Each member is an ordinary `#[derive(herald::Event)]` struct with its own name and version;
//! [`event_set!`](crate::event_set!) declares the enum and implements [`EventSet`] for it:
//!
//! ```
//! use herald::Event;
//! use herald_es::{event_set, EventSet};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "account.opened")]
//! pub struct Opened { pub owner: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "account.deposited", version = 2)]
//! pub struct Deposited { pub cents: u64 }
//!
//! event_set! {
//!     #[derive(Debug, Clone)]
//!     pub enum AccountEvent { Opened(Opened), Deposited(Deposited) }
//! }
//!
//! let e: AccountEvent = Deposited { cents: 500 }.into();
//! let envelope = e.to_envelope("bank").unwrap();
//! assert_eq!(envelope.routing_key, "account.deposited.v2");
//! assert!(matches!(AccountEvent::from_envelope(&envelope), Ok(Some(AccountEvent::Deposited(_)))));
//! assert_eq!(AccountEvent::descriptors().len(), 2);
//! ```

use herald::{Envelope, EventDescriptor};

use crate::error::Error;

/// A closed set of Herald events, usually an enum made by [`event_set!`](crate::event_set!).
pub trait EventSet: Sized + Send + Sync + 'static {
    /// Every member's contract (name, version, routing key).
    fn descriptors() -> Vec<EventDescriptor>;

    /// The member's envelope, published as `source`.
    fn to_envelope(&self, source: &str) -> herald::Result<Envelope>;

    /// Decode an envelope whose type is a member. `Ok(None)`: not a member. An envelope of a
    /// member's name at another version is an error (upcast it first: [`crate::Upcasters`]).
    fn from_envelope(envelope: &Envelope) -> Result<Option<Self>, Error>;

    /// The event's name (CloudEvents type).
    fn name(&self) -> &'static str;
}

/// Used by [`event_set!`](crate::event_set!); not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use herald::{Envelope, Event, EventDescriptor};

    /// Herald's result type, named so the macro needs no `herald` in the caller's scope.
    pub type HeraldResult<T> = herald::Result<T>;

    /// Decode a member's body, or say why not.
    pub fn decode<E: Event>(envelope: &Envelope) -> Result<E, crate::Error> {
        serde_json::from_slice(&envelope.body).map_err(|e| crate::Error::Decode {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version,
            event_id: envelope.id.clone(),
            reason: format!("{e} (as {})", std::any::type_name::<E>()),
        })
    }

    /// The error for a member's name at a version no member has.
    pub fn wrong_version(envelope: &Envelope, want: u32) -> crate::Error {
        crate::Error::Decode {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version,
            event_id: envelope.id.clone(),
            reason: format!(
                "the code reads version {want}; register an upcaster from v{} (herald_es::Upcasters)",
                envelope.event_version
            ),
        }
    }
}

/// Declare an enum of Herald events and implement [`EventSet`] (and `From` each member) for it.
/// Each variant wraps exactly one `#[derive(herald::Event)]` type. See the
/// [module docs](mod@crate::event_set) for an example.
#[macro_export]
macro_rules! event_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($ty:ty) ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant($ty) ),+
        }

        impl $crate::EventSet for $name {
            fn descriptors() -> ::std::vec::Vec<$crate::event_set::__private::EventDescriptor> {
                ::std::vec![$( <$ty as $crate::event_set::__private::Event>::descriptor() ),+]
            }

            fn to_envelope(
                &self,
                source: &str,
            ) -> $crate::event_set::__private::HeraldResult<$crate::event_set::__private::Envelope> {
                match self {
                    $( Self::$variant(e) => $crate::event_set::__private::Envelope::for_event(e, source), )+
                }
            }

            fn from_envelope(
                envelope: &$crate::event_set::__private::Envelope,
            ) -> ::std::result::Result<::std::option::Option<Self>, $crate::Error> {
                use $crate::event_set::__private::Event as _;
                $(
                    if envelope.event_type == <$ty>::NAME && envelope.event_version == <$ty>::VERSION {
                        return $crate::event_set::__private::decode::<$ty>(envelope)
                            .map(|e| ::std::option::Option::Some(Self::$variant(e)));
                    }
                )+
                $(
                    if envelope.event_type == <$ty>::NAME {
                        return ::std::result::Result::Err(
                            $crate::event_set::__private::wrong_version(envelope, <$ty>::VERSION),
                        );
                    }
                )+
                ::std::result::Result::Ok(::std::option::Option::None)
            }

            fn name(&self) -> &'static str {
                use $crate::event_set::__private::Event as _;
                match self {
                    $( Self::$variant(_) => <$ty>::NAME, )+
                }
            }
        }

        $(
            impl ::std::convert::From<$ty> for $name {
                fn from(e: $ty) -> Self {
                    Self::$variant(e)
                }
            }
        )+
    };
}
