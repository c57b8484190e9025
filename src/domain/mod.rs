//! Pure payment types with no I/O: money, orders, payment methods and the error codes the
//! whole fleet answers with. Every other module builds on these.

pub mod code;
pub mod lottery;
pub mod mixed;
pub mod money;
pub mod order;
pub mod payment;
pub mod refund;

pub use code::Code;
pub use money::{Money, MoneyError};
pub use order::{GoodsKind, OrderStatus};
pub use payment::{Asset, PayMethod, PayType, PaymentStatus};
