// Offset paging for List methods (common.v1.PageRequest / PageResponse). Page tokens are opaque
// to clients, so the scheme can change later.

/** Default and largest page sizes (common.v1.PageRequest). */
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;

/** How many rows to skip and return for `page`; a token this scheme did not issue starts over. */
export function paging(page: { pageSize: number; pageToken: string } | undefined): {
  skip: number;
  limit: number;
} {
  const size = page?.pageSize ?? 0;
  const limit = size <= 0 ? DEFAULT_PAGE_SIZE : Math.min(size, MAX_PAGE_SIZE);
  let skip = 0;
  if (page !== undefined && page.pageToken !== "") {
    const n = Number(Buffer.from(page.pageToken, "base64url").toString("utf8"));
    if (Number.isSafeInteger(n) && n >= 0) skip = n;
  }
  return { skip, limit };
}

/** Callers fetch limit + 1 rows; a row beyond the page means there is a next one. */
export function nextPageToken(skip: number, limit: number, got: number): string {
  return got <= limit ? "" : Buffer.from(String(skip + limit), "utf8").toString("base64url");
}
