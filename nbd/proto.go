package nbd

// Wire constants, named as in doc/proto.md.
const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic        = 0x49484156454F5054 // "IHAVEOPT"
	repMagic        = 0x3e889045565a9
	requestMagic    = 0x25609513
	simpleMagic     = 0x67446698
	structuredMagic = 0x668e33ef

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	clientFixedNewstyle = 1 << 0
	clientNoZeroes      = 1 << 1

	// transmission flags
	tflagHasFlags     = 1 << 0
	tflagReadOnly     = 1 << 1
	tflagSendFlush    = 1 << 2
	tflagCanMultiConn = 1 << 8

	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrUnknown  = 1<<31 + 6
	repErrShutdown = 1<<31 + 7
	repErrTooBig   = 1<<31 + 9

	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
	cmdFlagDF     = 1 << 2
	cmdFlagReqOne = 1 << 3

	replyFlagDone = 1 << 0

	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1

	stateHole = 1 << 0
	stateZero = 1 << 1

	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errShutdown = 108
)

// Limits. The block sizes are the protocol's defaults, so a client that
// never asks for them (OPT_EXPORT_NAME) obeys them too.
const (
	MinBlock       = 1
	PreferredBlock = 4096
	MaxPayload     = 32 << 20

	maxOptionLen = 64 << 10 // any option we understand fits in far less
	maxString    = 4096     // the spec's limit for names and messages
	maxQueries   = 128      // meta context queries per option
	// maxExtents bounds one block status reply (8 bytes each); the spec
	// allows a short reply and clients ask again from where it ended.
	maxExtents = 1 << 16
	// metaContextID is the ID of base:allocation, the one context served.
	metaContextID  = 1
	baseAllocation = "base:allocation"
)

// Transmission flags of every export: read-only, flush accepted (a
// no-op), and one cache for all connections, so multi-conn is safe.
const transmissionFlags = tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagCanMultiConn
