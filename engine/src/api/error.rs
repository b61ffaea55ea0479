//! ThingsBoard's error body: `{"status", "message", "errorCode", "timestamp"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::model::now_ms;
use actors::ports::{RegistryError, StoreError};
use serde_json::json;

use crate::auth::AuthError;

/// ThingsBoard's `ThingsboardErrorCode` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    General = 2,
    Authentication = 10,
    JwtTokenExpired = 11,
    InvalidArguments = 30,
    BadRequestParams = 31,
    ItemNotFound = 32,
    TooManyRequests = 33,
    PermissionDenied = 20,
    EntitiesLimitExceeded = 41,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadRequestParams,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::InvalidArguments,
            message: message.into(),
        }
    }

    pub fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::ItemNotFound,
            message: "Requested item wasn't found!".into(),
        }
    }

    /// ThingsBoard's answer to a role or an entity the caller may not act on.
    pub fn forbidden() -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::PermissionDenied,
            message: "You don't have permission to perform this operation!".into(),
        }
    }

    /// `"<Kind> with id [<id>] is not found"`, as ThingsBoard names a missing entity.
    pub fn entity_not_found(kind: &str, id: impl std::fmt::Display) -> ApiError {
        ApiError {
            message: format!("{kind} with id [{id}] is not found"),
            ..ApiError::not_found()
        }
    }

    /// A path the API does not have.
    pub fn no_such_resource() -> ApiError {
        ApiError {
            message: "No such resource".into(),
            ..ApiError::not_found()
        }
    }

    /// The queue or storage cannot take it now: 503.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::General,
            message: message.into(),
        }
    }

    /// A request that did not arrive in time: 408.
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: ErrorCode::General,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: ErrorCode::General,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({
            "status": self.status.as_u16(),
            "message": self.message,
            "errorCode": self.code as i32,
            "timestamp": now_ms(),
        }))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Expired => ErrorCode::JwtTokenExpired,
            _ => ErrorCode::Authentication,
        };
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code,
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidQuery(m) => ApiError::invalid(m),
            StoreError::Unavailable(m) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: ErrorCode::General,
                message: format!("storage unavailable: {m}"),
            },
            StoreError::Permanent(m) => ApiError::internal(m),
        }
    }
}

impl From<actors::directory::DirectoryError> for ApiError {
    fn from(e: actors::directory::DirectoryError) -> Self {
        use actors::directory::DirectoryError;
        match e {
            DirectoryError::Store(e) => e.into(),
            // As ThingsBoard answers its entity limits (and this engine its device limit).
            DirectoryError::Limit(m) => ApiError {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::EntitiesLimitExceeded,
                message: m,
            },
            DirectoryError::Conflict(m) => ApiError::bad_request(m),
            DirectoryError::NotFound(m) => ApiError {
                message: m,
                ..ApiError::not_found()
            },
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::DuplicateToken | RegistryError::DuplicateName => {
                ApiError::invalid(e.to_string())
            }
            RegistryError::NotFound => ApiError::not_found(),
            RegistryError::Store(e) => e.into(),
            RegistryError::TooManyDevices { .. } => ApiError {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::EntitiesLimitExceeded,
                message: e.to_string(),
            },
        }
    }
}
