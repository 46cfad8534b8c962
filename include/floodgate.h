/*
 * floodgate.h - the umbrella header: include this one.
 *
 * floodgate is resilience middleware for C services: stages (rate limiters,
 * circuit breakers, trace propagation, routing, ...) composed into a chain
 * around the service's own handlers. Each topic has its own header under
 * floodgate/; this header includes them all.
 *
 * Thread-safety, unless a function's comment says otherwise: long-lived
 * objects (chains, stages) are safe to share between threads once built;
 * a fg_ctx belongs to one request and one thread at a time.
 */
#ifndef FLOODGATE_H
#define FLOODGATE_H

#include "floodgate/common.h"
#include "floodgate/version.h"
#include "floodgate/error.h"
#include "floodgate/alloc.h"
#include "floodgate/clock.h"
#include "floodgate/ctx.h"
#include "floodgate/stage.h"
#include "floodgate/chain.h"
#include "floodgate/limiter.h"
#include "floodgate/breaker.h"
#include "floodgate/trace.h"
#include "floodgate/router.h"
#include "floodgate/fault.h"
#include "floodgate/retry.h"
#include "floodgate/bulkhead.h"
#include "floodgate/adaptive.h"
#include "floodgate/runtime.h"
#include "floodgate/config.h"
#include "floodgate/deadline.h"
#include "floodgate/histogram.h"
#include "floodgate/metrics.h"
#include "floodgate/cluster.h"

#endif /* FLOODGATE_H */
