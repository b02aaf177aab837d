// Package wire holds what the service API (package api) and its Go client
// (package apiclient) must agree on beyond the DPS record types (package
// store): the error body, the bulk operation's modes and answer, and the
// paths and headers that are dpsd's own. It imports nothing of the
// project, so that a client links neither the server nor a store engine.
package wire

// Error is the DPS error body: {"errorCode", "trackingId", "message", "timestampUtc"}.
// ErrorCode / 1000 is the HTTP status it was sent with.
type Error struct {
	ErrorCode    int    `json:"errorCode"`
	TrackingID   string `json:"trackingId"`
	Message      string `json:"message"`
	TimestampUTC string `json:"timestampUtc"`
}

// Bulk operation modes (the DPS bulk enrollment API).
const (
	// BulkCreate creates every item; an existing id is a per-item 409.
	BulkCreate = "create"
	// BulkUpdate creates or replaces every item.
	BulkUpdate = "update"
	// BulkUpdateIfMatchETag replaces items whose etag field matches the stored one.
	BulkUpdateIfMatchETag = "updateIfMatchETag"
	// BulkDelete deletes every item (conditionally when it carries an etag).
	BulkDelete = "delete"
)

// BulkResult is the answer to a bulk operation: per-item failures, the rest succeeded.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors"`
}

// BulkError is one failed item of a bulk operation. RegistrationID is set for
// enrollments, EnrollmentGroupID for groups; ErrorCode/1000 is an HTTP status.
type BulkError struct {
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	ErrorCode         int    `json:"errorCode"`
	ErrorStatus       string `json:"errorStatus"`
}

// BackupPath is the path of the hot backup endpoint (not part of the DPS API).
const BackupPath = "/backup"

// Trailers of a backup answer: a client that does not receive both, or whose
// copy differs from them, holds a cut copy and must discard it.
const (
	// BackupSizeTrailer carries the number of bytes sent.
	BackupSizeTrailer = "X-Dpsd-Backup-Size"
	// BackupSHA256Trailer carries the hex SHA-256 of the bytes sent.
	BackupSHA256Trailer = "X-Dpsd-Backup-Sha256"
)

// WarningHeader carries a warning about a write the service accepted: the
// request succeeded, but an operator should look (for example, one TPM
// endorsement key enrolled under a second registration id). One header
// per warning, plain text. DPS clients ignore headers they do not know;
// apiclient hands them to Options.Warnings.
const WarningHeader = "X-Dpsd-Warning"
