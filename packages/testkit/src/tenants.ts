// The users most isolation tests need: tenant A with an admin and a member, tenant B with an
// admin. Signed up through the real auth service with the caller's own AuthService client (the
// test kit cannot depend on @ensemble/kit or the generated code, which test themselves with it),
// so only the shape of the two calls is named here.

export const TEST_PASSWORD = "correct-Horse-battery-9";

type SignupTenant = { case: "tenantName"; value: string } | { case: "inviteToken"; value: string };

/** What the helper calls of an AuthService client (a Connect client of it fits). */
export interface SignupClient {
  signup(req: {
    email: string;
    password: string;
    tenant: SignupTenant;
  }): Promise<{ tokens?: { accessToken: string } | undefined }>;
  createInvite(
    req: { role: number },
    opts: { headers: Record<string, string> },
  ): Promise<{ token: string }>;
}

export interface TwoTenants {
  /** Access tokens. */
  adminA: string;
  memberA: string;
  adminB: string;
}

/**
 * Signs up `<label>-admin-a`, `<label>-member-a` (invited with `memberRole`, the Role.USER value
 * of the caller's generated code) and `<label>-admin-b`, in tenants "<label> A" and "<label> B".
 */
export async function signUpTwoTenants(
  auth: SignupClient,
  label: string,
  memberRole: number,
): Promise<TwoTenants> {
  const stamp = Date.now();
  const signup = async (who: string, tenant: SignupTenant): Promise<string> => {
    const res = await auth.signup({
      email: `${label}-${who}-${stamp}@example.com`,
      password: TEST_PASSWORD,
      tenant,
    });
    const token = res.tokens?.accessToken ?? "";
    if (token === "") throw new Error(`signup of ${label}-${who} returned no access token`);
    return token;
  };
  const adminA = await signup("admin-a", { case: "tenantName", value: `${label} A` });
  const invite = await auth.createInvite(
    { role: memberRole },
    { headers: { authorization: `Bearer ${adminA}` } },
  );
  const memberA = await signup("member-a", { case: "inviteToken", value: invite.token });
  const adminB = await signup("admin-b", { case: "tenantName", value: `${label} B` });
  return { adminA, memberA, adminB };
}
