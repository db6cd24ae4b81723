"""The session service as the gateway calls it: typed methods, each call bounded by the
gateway's gRPC timeout, and a failed call translated once into the `ApiError` a client sees
(`errors.from_grpc`; `what` names the thing a NOT_FOUND is about)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from parley.v1 import session_pb2, session_pb2_grpc
from parley_gateway.errors import ApiError, from_grpc

__all__ = ["SessionClient"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class SessionClient:
    """A method per RPC the gateway makes, named after it."""

    def __init__(self, stub: session_pb2_grpc.SessionServiceAsyncStub, *, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    async def _call(
        self, rpc: Callable[..., Awaitable[Resp]], request: Req, *, what: str = "session"
    ) -> Resp:
        try:
            return await rpc(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, what) from exc

    # users and keys

    async def authenticate_key(self, api_key: str) -> session_pb2.User:
        try:
            return await self._stub.AuthenticateKey(
                session_pb2.AuthenticateKeyRequest(api_key=api_key), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                message = "invalid or revoked API key"
                if "disabled" in (exc.details() or ""):
                    message = "this API key's account is disabled by an admin"
                raise ApiError(401, "authentication_error", message) from exc
            raise from_grpc(exc, "session") from exc

    async def create_user(self, request: session_pb2.CreateUserRequest) -> session_pb2.User:
        return await self._call(self._stub.CreateUser, request)

    async def create_api_key(
        self, request: session_pb2.CreateApiKeyRequest
    ) -> session_pb2.CreateApiKeyResponse:
        return await self._call(self._stub.CreateApiKey, request, what="user")

    async def revoke_api_key(
        self, request: session_pb2.RevokeApiKeyRequest
    ) -> session_pb2.RevokeApiKeyResponse:
        return await self._call(self._stub.RevokeApiKey, request, what="API key")

    # accounts and browser sessions

    async def sign_up(self, request: session_pb2.SignUpRequest) -> session_pb2.User:
        return await self._call(self._stub.SignUp, request)

    async def sign_in(self, request: session_pb2.SignInRequest) -> session_pb2.SignInResponse:
        return await self._call(self._stub.SignIn, request)

    async def sign_in_with_identity(
        self, request: session_pb2.SignInWithIdentityRequest
    ) -> session_pb2.SignInResponse:
        return await self._call(self._stub.SignInWithIdentity, request)

    async def authenticate_session(
        self, request: session_pb2.AuthenticateSessionRequest
    ) -> session_pb2.User:
        return await self._call(self._stub.AuthenticateSession, request)

    async def sign_out(self, request: session_pb2.SignOutRequest) -> session_pb2.SignOutResponse:
        return await self._call(self._stub.SignOut, request)

    async def change_password(
        self, request: session_pb2.ChangePasswordRequest
    ) -> session_pb2.ChangePasswordResponse:
        return await self._call(self._stub.ChangePassword, request)

    async def set_password(
        self, request: session_pb2.SetPasswordRequest
    ) -> session_pb2.ChangePasswordResponse:
        return await self._call(self._stub.SetPassword, request, what="user")

    async def create_invite(
        self, request: session_pb2.CreateInviteRequest
    ) -> session_pb2.CreateInviteResponse:
        return await self._call(self._stub.CreateInvite, request)

    async def list_api_keys(
        self, request: session_pb2.ListApiKeysRequest
    ) -> session_pb2.ListApiKeysResponse:
        return await self._call(self._stub.ListApiKeys, request)

    async def set_role(self, request: session_pb2.SetRoleRequest) -> session_pb2.User:
        return await self._call(self._stub.SetRole, request, what="user")

    async def list_audit_events(
        self, request: session_pb2.ListAuditEventsRequest
    ) -> session_pb2.ListAuditEventsResponse:
        return await self._call(self._stub.ListAuditEvents, request)

    async def list_tenant_users(
        self, request: session_pb2.ListTenantUsersRequest
    ) -> session_pb2.ListTenantUsersResponse:
        return await self._call(self._stub.ListTenantUsers, request)

    async def set_user_disabled(
        self, request: session_pb2.SetUserDisabledRequest
    ) -> session_pb2.User:
        return await self._call(self._stub.SetUserDisabled, request, what="user")

    async def delete_account(
        self, request: session_pb2.DeleteAccountRequest
    ) -> session_pb2.DeleteAccountResponse:
        return await self._call(self._stub.DeleteAccount, request, what="user")

    async def consume_quota(
        self, request: session_pb2.ConsumeQuotaRequest
    ) -> session_pb2.ConsumeQuotaResponse:
        return await self._call(self._stub.ConsumeQuota, request)

    async def add_tokens(self, request: session_pb2.AddTokensRequest) -> None:
        await self._call(self._stub.AddTokens, request)

    # turns and completions

    async def start_turn(
        self, request: session_pb2.StartTurnRequest
    ) -> session_pb2.StartTurnResponse:
        return await self._call(self._stub.StartTurn, request)

    async def prepare_completion(
        self, request: session_pb2.PrepareCompletionRequest
    ) -> session_pb2.PrepareCompletionResponse:
        return await self._call(self._stub.PrepareCompletion, request)

    async def list_models(self) -> session_pb2.ListModelsResponse:
        return await self._call(self._stub.ListModels, session_pb2.ListModelsRequest())

    async def create_completion(
        self, request: session_pb2.CreateCompletionRequest
    ) -> session_pb2.CreateCompletionResponse:
        return await self._call(self._stub.CreateCompletion, request)

    async def get_completion(
        self, request: session_pb2.GetCompletionRequest
    ) -> session_pb2.Completion:
        return await self._call(self._stub.GetCompletion, request, what="completion")

    async def mark_completion_running(
        self, request: session_pb2.MarkCompletionRunningRequest
    ) -> session_pb2.Completion:
        return await self._call(self._stub.MarkCompletionRunning, request)

    # chats

    async def list_chats(
        self, request: session_pb2.ListChatsRequest
    ) -> session_pb2.ListChatsResponse:
        return await self._call(self._stub.ListChats, request)

    async def get_chat(self, request: session_pb2.GetChatRequest) -> session_pb2.GetChatResponse:
        return await self._call(self._stub.GetChat, request)

    async def upload_attachment(
        self, request: session_pb2.UploadAttachmentRequest
    ) -> session_pb2.Attachment:
        return await self._call(self._stub.UploadAttachment, request)

    async def list_attachments(
        self, request: session_pb2.ListAttachmentsRequest
    ) -> session_pb2.ListAttachmentsResponse:
        return await self._call(self._stub.ListAttachments, request)

    async def get_attachment(
        self, request: session_pb2.GetAttachmentRequest
    ) -> session_pb2.GetAttachmentResponse:
        return await self._call(self._stub.GetAttachment, request)

    async def delete_attachment(self, request: session_pb2.DeleteAttachmentRequest) -> None:
        await self._call(self._stub.DeleteAttachment, request)

    async def list_siblings(
        self, request: session_pb2.ListSiblingsRequest
    ) -> session_pb2.ListSiblingsResponse:
        return await self._call(self._stub.ListSiblings, request)

    async def select_branch(
        self, request: session_pb2.SelectBranchRequest
    ) -> session_pb2.GetChatResponse:
        return await self._call(self._stub.SelectBranch, request)

    async def delete_branch(
        self, request: session_pb2.DeleteBranchRequest
    ) -> session_pb2.GetChatResponse:
        return await self._call(self._stub.DeleteBranch, request)

    async def search_chats(
        self, request: session_pb2.SearchChatsRequest
    ) -> session_pb2.SearchChatsResponse:
        return await self._call(self._stub.SearchChats, request)

    async def update_chat(self, request: session_pb2.UpdateChatRequest) -> session_pb2.Chat:
        return await self._call(self._stub.UpdateChat, request)

    async def delete_chat(
        self, request: session_pb2.DeleteChatRequest
    ) -> session_pb2.DeleteChatResponse:
        return await self._call(self._stub.DeleteChat, request)

    # bot profiles

    async def list_bots(self, request: session_pb2.ListBotsRequest) -> session_pb2.ListBotsResponse:
        return await self._call(self._stub.ListBots, request)

    async def get_bot(self, request: session_pb2.GetBotRequest) -> session_pb2.BotProfile:
        return await self._call(self._stub.GetBot, request, what="bot profile")

    async def create_bot(self, request: session_pb2.CreateBotRequest) -> session_pb2.BotProfile:
        return await self._call(self._stub.CreateBot, request)

    async def update_bot(self, request: session_pb2.UpdateBotRequest) -> session_pb2.BotProfile:
        return await self._call(self._stub.UpdateBot, request, what="bot profile")

    async def delete_bot(
        self, request: session_pb2.DeleteBotRequest
    ) -> session_pb2.DeleteBotResponse:
        return await self._call(self._stub.DeleteBot, request, what="bot profile")

    # feedback

    async def submit_feedback(
        self, request: session_pb2.SubmitFeedbackRequest
    ) -> session_pb2.Feedback:
        return await self._call(self._stub.SubmitFeedback, request)

    async def list_feedback(
        self, request: session_pb2.ListFeedbackRequest
    ) -> session_pb2.ListFeedbackResponse:
        return await self._call(self._stub.ListFeedback, request)

    async def export_chats(
        self, request: session_pb2.ExportChatsRequest, *, timeout_s: float
    ) -> list[session_pb2.ExportedChat]:
        try:
            return [c async for c in self._stub.ExportChats(request, timeout=timeout_s)]
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "session") from exc

    async def delete_user_data(
        self, request: session_pb2.DeleteUserDataRequest
    ) -> session_pb2.DeleteUserDataResponse:
        return await self._call(self._stub.DeleteUserData, request)

    async def get_usage(self, request: session_pb2.GetUsageRequest) -> session_pb2.GetUsageResponse:
        return await self._call(self._stub.GetUsage, request)

    async def export_feedback(
        self, request: session_pb2.ExportFeedbackRequest, *, timeout_s: float
    ) -> AsyncIterator[session_pb2.Feedback]:
        """The stream of an export (its own, longer `timeout_s`)."""
        try:
            async for item in self._stub.ExportFeedback(request, timeout=timeout_s):
                yield item
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "session") from exc
